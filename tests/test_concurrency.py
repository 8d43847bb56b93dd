"""Calls from several Python threads at once: the results are bit-identical to one thread's, and
OpenBLAS gets its thread count back (tests/concurrent_calls.py, in a subprocess of its own)."""

import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def test_four_threads_get_one_threads_bits():
    """4 threads x 10 calls at B = 2048, every rule, the loss and the loss with its gradient."""
    script = os.path.join(HERE, "concurrent_calls.py")
    run = subprocess.run(
        [sys.executable, script, "4", "10", "2048"], capture_output=True, text=True, timeout=600
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("4 threads x 10 calls"), run.stdout

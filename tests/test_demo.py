"""`python -m semihard_numba`: the demo runs, the backends agree, and the "cpu" row's first call
is the process's first (compiling or loading the kernels), not a call after mining compiled them."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Runs the demo in a fresh process and records, at the "cpu" backend's first timed call, how many
# signatures the "semihard" kernels had: none, if nothing compiled or loaded them before it.
_CHILD = """
import json, sys
from semihard_numba import __main__ as demo, _cpu

kernels = list(_cpu._SEMIHARD_LOOPS.values())
ready_before = []
call = demo.triplet_semihard_loss

def recording(*args, backend, **kwargs):
    if backend == "cpu" and not ready_before:
        ready_before.append(sum(len(k.signatures) for k in kernels))
    return call(*args, backend=backend, **kwargs)

demo.triplet_semihard_loss = recording
code = demo.main([])
ready_after = sum(len(k.signatures) for k in kernels)
print(json.dumps({"code": code, "before": ready_before[0], "after": ready_after}))
"""


def test_demo_times_the_process_first_cpu_call():
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, timeout=600
    )
    assert child.returncode == 0, child.stderr
    lines = child.stdout.splitlines()
    result = json.loads(lines[-1])
    assert result["code"] == 0  # the backends agree
    assert result["before"] == 0  # the timed first call is the one that compiles or loads
    assert result["after"] > 0  # ... and these are the kernels it runs
    cpu_row = next(line for line in lines if line.startswith("cpu "))
    first, following = (float(cell.rstrip("s")) for cell in cpu_row.split()[2:4])
    assert first > 0 and following > 0
    assert any(line.startswith("first call:") for line in lines)

"""Calls from several Python threads at once, on each of Numba's threading layers: the results
are bit-identical to one thread's, and the process never aborts (tests/concurrent_calls.py)."""

import importlib.util
import os
import subprocess
import sys

import pytest


HERE = os.path.dirname(os.path.abspath(__file__))
TBB = importlib.util.find_spec("tbb") is not None or os.path.exists(
    os.path.join(sys.prefix, "lib", "libtbb.so.12")
)


def _run(layer, *sizes):
    env = dict(os.environ)
    # pip's tbb puts libtbb in the environment's lib/, which the loader does not search
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [os.path.join(sys.prefix, "lib"), env.get("LD_LIBRARY_PATH")])
    )
    script = os.path.join(HERE, "concurrent_calls.py")
    return subprocess.run(
        [sys.executable, script, layer, *map(str, sizes)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


LAYERS = [
    "workqueue",
    pytest.param("omp", marks=pytest.mark.full),
    pytest.param(
        "tbb",
        marks=[pytest.mark.full, pytest.mark.skipif(not TBB, reason="pip install tbb")],
    ),
]


@pytest.mark.parametrize("layer", LAYERS)
def test_four_threads_get_one_threads_bits(layer):
    """4 threads x 10 calls at B = 2048 (the quick tier: workqueue only, the layer that aborted)."""
    run = _run(layer, 4, 10, 2048)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith(f"layer {layer}:"), run.stdout


def test_the_guard_is_needed():
    """Without `_cpu`'s guard, workqueue aborts the process: the test above checks something."""
    code = (
        "import os, runpy, sys; os.environ['NUMBA_THREADING_LAYER'] = 'workqueue';"
        "from semihard_numba import _cpu;"
        "_cpu._one_parallel_region_at_a_time = lambda serial, parallel, *a: parallel(*a);"
        f"sys.argv = ['', 'workqueue', '4', '10', '2048'];"
        f"runpy.run_path({os.path.join(HERE, 'concurrent_calls.py')!r}, run_name='__main__')"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert run.returncode != 0
    assert "Concurrent access has been detected" in run.stdout + run.stderr

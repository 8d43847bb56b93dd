"""Every CUDA kernel compiles for a real GPU (compute capability 9.0) on a machine without one:
Numba's type inference for the CUDA target, and NVVM. The simulator does neither, so a kernel can
pass tests/test_cuda.py there and still fail on a device; this catches that much. Needs NVVM
(a CUDA toolkit, or the nvidia-cuda-nvcc wheels that numba-cuda's extras bring)."""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

NVVM_PROBE = "from numba.cuda.cudadrv import nvvm; nvvm.NVVM()"


def nvvm_missing():
    if SIMULATOR:
        return "the CUDA simulator replaces numba.cuda's compiler"
    run = subprocess.run([sys.executable, "-c", NVVM_PROBE], capture_output=True, text=True)
    return None if run.returncode == 0 else f"NVVM cannot be loaded: {run.stderr[-300:]}"


MISSING = nvvm_missing()


@pytest.mark.skipif(MISSING is not None, reason=str(MISSING))
@pytest.mark.full  # slow: the full tier (tests/tiers.py)
def test_every_kernel_compiles_to_ptx():
    run = subprocess.run(
        [sys.executable, os.path.join("bench", "gpu_check.py"), "--ptx"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0 and "FAIL" not in run.stdout, run.stdout[-3000:] + run.stderr[-3000:]
    assert run.stdout.count("  ok   ") >= 54

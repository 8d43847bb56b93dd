import importlib.util
import os

from hypothesis import settings

# Property tests run many small batches; compiled kernels make the first example slow.
settings.register_profile("default", deadline=None, max_examples=60)
settings.register_profile("ci", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def _cuda_tests_runnable():
    """The CUDA tests run under the simulator (its own pytest process) or on a usable GPU."""
    if os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0"):
        return True
    from semihard_numba import backends

    return backends()["cuda"][0]


CUDA_TESTS = _cuda_tests_runnable()
TORCH_TESTS = importlib.util.find_spec("torch") is not None
collect_ignore = [] if CUDA_TESTS else ["test_cuda.py"]
collect_ignore += [] if TORCH_TESTS else ["test_torch.py", "torch_workers.py"]


def pytest_report_header(config):
    lines = []
    if not CUDA_TESTS:
        lines.append(
            "tests/test_cuda.py not collected: no usable GPU; run it under the simulator with "
            "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_cuda.py"
        )
    if not TORCH_TESTS:
        lines.append(
            "tests/test_torch.py not collected: PyTorch is not installed (its CPU build: pip "
            "install torch --index-url https://download.pytorch.org/whl/cpu)"
        )
    return lines

import importlib.util
import json
import os

from hypothesis import settings

from tiers import FULL, TIER, TIER_ENV

# Property tests run many small batches; compiled kernels make the first example slow. The quick
# tier draws fewer examples, the full tier (CI) the full count; HYPOTHESIS_PROFILE overrides.
settings.register_profile("quick", deadline=None, max_examples=20)
settings.register_profile("full", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", TIER))


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


def _keras_backend():
    """The backend Keras will pick (KERAS_BACKEND, else keras.json, else tensorflow), found
    without importing Keras, which would fix it for the whole process."""
    backend = os.environ.get("KERAS_BACKEND")
    if not backend:
        home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
        try:
            with open(os.path.join(home, "keras.json")) as config:
                backend = json.load(config).get("backend")
        except (OSError, ValueError):
            pass
    return backend or "tensorflow"


# The framework integrations: each test file where its framework is installed. test_keras.py runs
# on one Keras backend per process (KERAS_BACKEND), where that backend is installed.
FRAMEWORK_TESTS = {
    "test_jax.py": importlib.util.find_spec("jax") is not None,
    "test_tensorflow.py": importlib.util.find_spec("tensorflow") is not None,
    "test_keras.py": importlib.util.find_spec("keras") is not None
    and importlib.util.find_spec(_keras_backend()) is not None,
}
collect_ignore += [name for name, runnable in FRAMEWORK_TESTS.items() if not runnable]


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        f"full: runs in the full tier only ({TIER_ENV}=full; the quick tier deselects it)",
    )


def pytest_collection_modifyitems(config, items):
    if FULL:
        return
    quick = [item for item in items if item.get_closest_marker("full") is None]
    if len(quick) < len(items):
        config.hook.pytest_deselected(items=[i for i in items if i not in quick])
        items[:] = quick


def pytest_report_header(config):
    lines = [f"test tier: {TIER} ({TIER_ENV}=full for every golden case and the slow tests)"]
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
    skipped = [name for name, runnable in FRAMEWORK_TESTS.items() if not runnable]
    if skipped:
        lines.append(
            f"{', '.join(skipped)} not collected: their framework (or the Keras backend "
            f"{_keras_backend()!r}) is not installed"
        )
    return lines

"""Which backend runs a call, and the validated batch it gets.

backend="auto":
- embeddings on a GPU (any object exposing ``__cuda_array_interface__``: CuPy, PyTorch CUDA
  tensors, Numba device arrays) go to "cuda", used in place;
- host embeddings go to "cuda" only when a GPU is usable and the batch has at least
  `cuda_min_batch()` rows (default `DEFAULT_CUDA_MIN_BATCH`, environment variable
  SEMIHARD_NUMBA_CUDA_MIN_BATCH, read at each call), else to "cpu".

The host backends ("python", "numpy", "cpu") given device arrays copy them to the host and return
NumPy results. Labels may sit on either side: device labels (B values) are always copied to the
host, where the class tables are built.

`numba.cuda` is imported (through `_cuda`) only when a call needs it, so importing the package never
touches CUDA, and machines without CUDA run the host backends as usual.
"""

import os

import numba

from . import _cpu, _numpy, _python
from ._device import INSTALL_HINT, is_device_array
from ._inputs import check_flag, host_batch

HOST_BACKENDS = {"python": _python, "numpy": _numpy, "cpu": _cpu}
BACKEND_NAMES = ("auto", *HOST_BACKENDS, "cuda")

# Host batches at least this large go to the GPU under backend="auto". An estimate, not yet
# measured on a GPU: bench/gpu_check.py prints the measured crossover.
DEFAULT_CUDA_MIN_BATCH = 4096
CUDA_MIN_BATCH_ENV = "SEMIHARD_NUMBA_CUDA_MIN_BATCH"

_cuda_status = None  # (usable, reason), probed once on first need


def cuda_status():
    """(usable, reason) for the "cuda" backend; imports numba.cuda on first use, creates no context."""
    global _cuda_status
    if _cuda_status is None:
        try:
            from . import _cuda
        except Exception as error:  # numba without a CUDA target, or a broken CUDA install
            _cuda_status = (
                False,
                f"numba.cuda cannot be imported ({type(error).__name__}: {error}); {INSTALL_HINT}",
            )
        else:
            _cuda_status = _cuda.status()
    return _cuda_status


def _cuda_backend():
    """The _cuda module, or a RuntimeError saying what is missing and how to install it."""
    usable, reason = cuda_status()
    if not usable:
        raise RuntimeError(f'backend "cuda" is not usable on this machine: {reason}')
    from . import _cuda

    return _cuda


def cuda_min_batch():
    """The smallest host batch that backend="auto" sends to a usable GPU."""
    raw = os.environ.get(CUDA_MIN_BATCH_ENV, "").strip()
    if not raw:
        return DEFAULT_CUDA_MIN_BATCH
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if value < 0:
        raise ValueError(
            f"{CUDA_MIN_BATCH_ENV} must be a non-negative integer batch size, got {raw!r}"
        )
    return value


def backends():
    """Which backends this machine can run: {name: (usable, reason)}.

    Examples
    --------
    >>> import semihard_numba
    >>> semihard_numba.backends()["cpu"][0]
    True
    """
    return {
        "python": (True, "the readable reference loop (pure Python, slow)"),
        "numpy": (True, "vectorized port of TFA's tensor algebra (O(B^3) memory)"),
        "cpu": (
            True,
            f"Numba {numba.__version__} kernel, {numba.get_num_threads()} threads",
        ),
        "cuda": cuda_status(),
    }


def _host(obj):
    if is_device_array(obj):
        from . import _cuda  # a device array implies numba.cuda can see it

        return _cuda.to_host(obj)
    return obj


def resolve(labels, embeddings, margin, distance_metric, backend, check_finite, anchors=None):
    """(backend module, Batch) for a call. A backend module has evaluate(batch, rule, want_grad,
    reduction) and mine(batch)."""
    if not isinstance(backend, str) or backend not in BACKEND_NAMES:
        raise ValueError(
            f"unknown backend {backend!r}: use one of {', '.join(map(repr, BACKEND_NAMES))}"
        )
    check_flag("check_finite", check_finite)
    on_device = is_device_array(embeddings)
    host = (_host(labels), embeddings, margin, distance_metric, check_finite, _host(anchors))
    if backend == "auto":
        if on_device:
            backend = "cuda"
        else:
            min_batch = cuda_min_batch()
            batch = host_batch(*host)
            if batch.size >= min_batch and cuda_status()[0]:
                return _cuda_backend(), batch
            return _cpu, batch
    if backend == "cuda":
        cuda = _cuda_backend()
        if on_device:
            return cuda, cuda.device_batch(
                labels, embeddings, margin, distance_metric, check_finite, _host(anchors)
            )
        return cuda, host_batch(*host)
    return HOST_BACKENDS[backend], host_batch(*host[:1], _host(embeddings), *host[2:])

"""What the package knows about GPUs before it imports numba.cuda: how to recognise a device array,
whether the CUDA simulator is on, and what to install. Imports nothing else from the package."""

import os

INSTALL_HINT = (
    'pip install "semihard-numba[cuda12]" (CUDA 12 driver) or "semihard-numba[cuda13]" '
    "(CUDA 13 driver)"
)


def simulator_enabled():
    """Whether Numba's CUDA simulator is on (NUMBA_ENABLE_CUDASIM, read by Numba at its import)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def is_device_array(obj):
    """True for GPU arrays (``__cuda_array_interface__``, or the CUDA simulator's arrays)."""
    if type(obj).__module__.startswith("numba.cuda.simulator"):
        return True
    try:
        return hasattr(obj, "__cuda_array_interface__")
    except RuntimeError as error:  # PyTorch raises here for CUDA tensors that require grad
        raise TypeError(
            f"cannot use this {type(obj).__name__} through __cuda_array_interface__ ({error}); "
            "PyTorch tensors that require grad must be detached first (tensor.detach())"
        ) from error

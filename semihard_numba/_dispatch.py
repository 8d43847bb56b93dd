"""Which backend runs a call, and the validated batch it gets."""

from . import _cpu, _numpy, _python
from ._inputs import host_batch

HOST_BACKENDS = {"python": _python, "numpy": _numpy, "cpu": _cpu}
BACKEND_NAMES = ("auto", *HOST_BACKENDS)


def resolve(labels, embeddings, margin, distance_metric, backend, check_finite):
    """(backend module, Batch) for a call. A backend module has loss(batch), mine(batch) and
    loss_and_grad(batch)."""
    if backend == "auto":
        backend = "cpu"
    if backend not in HOST_BACKENDS:
        raise ValueError(
            f"unknown backend {backend!r}: use one of {', '.join(map(repr, BACKEND_NAMES))}"
        )
    return HOST_BACKENDS[backend], host_batch(labels, embeddings, margin, distance_metric, check_finite)

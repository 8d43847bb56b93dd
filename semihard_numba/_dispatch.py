"""Which backend runs a call."""

from . import _cpu, _numpy, _python

HOST_BACKENDS = {"python": _python, "numpy": _numpy, "cpu": _cpu}
BACKEND_NAMES = ("auto", *HOST_BACKENDS)


def host_backend(name):
    """The module implementing host backend `name` ("auto" picks "cpu")."""
    if name == "auto":
        name = "cpu"
    if name not in HOST_BACKENDS:
        raise ValueError(f"unknown backend {name!r}: use one of {', '.join(map(repr, BACKEND_NAMES))}")
    return HOST_BACKENDS[name]

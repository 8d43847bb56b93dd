"""The distance metrics: their names, the codes the compiled kernels know them by, and the formula
of one entry of TFA's distance matrix and of its derivative, written once for the CPU and the GPU
kernels (a CUDA kernel compiles these plain Numba functions for the device when it calls them).

All arithmetic stays in the embeddings' precision: constants are made in the dtype of an array
argument, never as Python floats (Numba would promote float32 arithmetic to float64 with them).
"""

import math

from ._cache import jit

NAMES = ("L2", "squared-L2", "angular")
PRECOMPUTED, L2, SQUARED_L2, ANGULAR = 0, 1, 2, 3  # PRECOMPUTED: a callable returned the matrix
CODES = {"L2": L2, "squared-L2": SQUARED_L2, "angular": ANGULAR}


def code(metric):
    """The kernels' code for a metric name, or PRECOMPUTED for a callable."""
    return PRECOMPUTED if callable(metric) else CODES[metric]


@jit
def distance(gram, sq, a, n, metric):
    """D[a, n] from the Gram entry gram = y_a . y_n, as TFA computes it, in sq's dtype.

    "L2" / "squared-L2": d2 = (|y_a|^2 + |y_n|^2) - 2 y_a.y_n with sq the squared norms, 0 where it
    is not positive and on the diagonal, then its square root for "L2". "angular": y holds the
    L2-normalised rows and D = max(1 - gram, 0); TFA does not force its diagonal to 0.
    Every result is >= +0.0, never -0.0: the kernels compare distances by their bit patterns.
    """
    zero = sq.dtype.type(0)
    if metric == ANGULAR:
        d = sq.dtype.type(1) - gram
        return d if d > zero else zero
    d2 = (sq[a] + sq[n]) - (gram + gram)
    d2 = d2 if (d2 > zero) & (a != n) else zero
    return math.sqrt(d2) if metric == L2 else d2


@jit
def pre_distance_gradient(grad, d, metric, like):
    """dL/dP for one entry from grad = dL/dD and the distance d, where P is the squared distance
    ("L2", "squared-L2") or the cosine ("angular"); `like` is any array of the compute dtype.
    A distance of 0 passes no gradient (TFA's zero mask, the clamp at 0 for "angular"), so
    duplicate points never give NaN."""
    zero = like.dtype.type(0)
    if d <= zero:
        return zero
    if metric == L2:  # D = sqrt(P)
        return grad / (d + d)
    if metric == SQUARED_L2:
        return grad
    return -grad  # angular: D = 1 - P

"""Pairwise distances exactly as TensorFlow Addons computes them, and their backward pass.

All arithmetic stays in the embeddings' dtype: computing float32 distances in float64 would pick a
different negative on near-ties, and the golden TFA data shows it.

The backward pass works on the "pre-distance" P each metric is built from: the squared distance
d2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j for "L2" and "squared-L2", the cosine n_i.n_j of the L2-normalised
rows for "angular". Backends hand over dL/dP; `pre_distance_backward` turns it into dL/dx.
"""

import os

import numpy as np

from ._inputs import check_distance_matrix

L2_NORMALIZE_EPSILON = 1e-12  # tf.math.l2_normalize's default


def squared_norms(x, check=False):
    """|x_i|^2 per row, in x's dtype; with check, `check_squared_norms` too."""
    sq = np.einsum("ij,ij->i", x, x)
    if check:
        check_squared_norms(sq)
    return sq


def check_squared_norms(sq):
    """For "L2" and "squared-L2", whose formula adds two squared norms: a ValueError naming the
    rows whose doubled squared norm overflows, since a distance from them would be inf or NaN and
    the loss a wrong finite number. Runs even with check_finite=False (sq costs nothing more)."""
    with np.errstate(over="ignore"):
        rows = np.flatnonzero(np.isinf(sq + sq))
    if rows.size:
        raise ValueError(
            f"the squared norms of embedding rows {rows[:10].tolist()}"
            f"{' ...' if rows.size > 10 else ''} overflow {sq.dtype} (|x|^2 + |y|^2 is not "
            "finite): rescale the embeddings, or pass float64"
        )


def _normalized(x):
    """(n, r, clamped) as tf.math.l2_normalize(x, axis=1) computes them: n = x * r with
    r = rsqrt(max(|x|^2, 1e-12)); clamped marks the rows below that epsilon. A row whose squared
    norm overflows is divided by its largest entry first, so its n is still the unit vector (TF
    gives 0) and r still 1 / |x| (which may then be subnormal)."""
    sq = squared_norms(x)
    r = 1 / np.sqrt(np.maximum(sq, x.dtype.type(L2_NORMALIZE_EPSILON)))
    n = x * r[:, None]
    huge = np.flatnonzero(np.isinf(sq))
    if huge.size:
        scale = np.abs(x[huge]).max(axis=1)
        y = x[huge] / scale[:, None]
        r_y = 1 / np.sqrt(squared_norms(y))
        n[huge] = y * r_y[:, None]
        r[huge] = r_y / scale
    return n, r, sq < x.dtype.type(L2_NORMALIZE_EPSILON)


def l2_normalize(x):
    """tf.math.l2_normalize(x, axis=1): x * rsqrt(max(|x|^2, 1e-12)), without overflow."""
    return _normalized(x)[0]


# NumPy runs y @ y.T as a BLAS syrk, which does half the multiplications, and then mirrors the
# triangle it computed with a strided copy. For the narrow rows of metric learning that copy costs
# more than the multiplications it saves; wide rows are compute-bound and syrk's halved work wins.
# `python -m bench.products` measures the crossover (bench/README.md has the figures).
GRAM_GEMM_MAX_DIM = 256


def gram(y):
    """y @ y.T, as a plain matrix product (gemm) for rows of up to GRAM_GEMM_MAX_DIM entries."""
    return y @ (y.copy().T if y.shape[1] <= GRAM_GEMM_MAX_DIM else y.T)


BLOCK_BYTES_ENV = "SEMIHARD_NUMBA_BLOCK_BYTES"
DEFAULT_BLOCK_BYTES = 2**30


def block_bytes():
    """The memory a block of Gram rows may take (SEMIHARD_NUMBA_BLOCK_BYTES, read at each call)."""
    raw = os.environ.get(BLOCK_BYTES_ENV, "").strip()
    try:
        value = int(raw) if raw else DEFAULT_BLOCK_BYTES
    except ValueError:
        value = 0
    if value <= 0:
        raise ValueError(f"{BLOCK_BYTES_ENV} must be a positive number of bytes, got {raw!r}")
    return value


def block_rows(batch_size, itemsize):
    """How many anchors a block holds: as many rows of B distances as fit in `block_bytes()`."""
    return max(1, block_bytes() // (batch_size * itemsize))


def gram_rows(y, rows, out=None):
    """(y @ y.T)[rows]: the whole product by `gram` when `rows` is every row, else the gemm
    y[rows] @ y.T, into `out` when given."""
    if out is None and rows.shape[0] == y.shape[0]:
        return gram(y)
    return np.matmul(y[rows], y.T, out=out)


def pairwise_distances(x, metric):
    """The (B, B) distance matrix of TFA's `distance_metric`, in x's dtype.

    "L2" / "squared-L2": d2 = (|x_i|^2 + |x_j|^2) - 2 x_i.x_j, clamped at 0; entries <= 0 and the
    diagonal are exactly 0; "L2" takes the square root. "angular": max(1 - n_i.n_j, 0) with n the
    L2-normalised rows, diagonal not forced to 0. A callable gets x and returns the matrix itself.
    """
    if callable(metric):
        return check_distance_matrix(metric(x), x.shape[0], x.dtype)
    if metric == "angular":
        n = l2_normalize(x)
        return np.maximum(1 - gram(n), 0)
    sq = squared_norms(x, check=True)
    d2 = np.maximum((sq[:, None] + sq[None, :]) - 2 * gram(x), 0)
    np.fill_diagonal(d2, 0)
    return d2 if metric == "squared-L2" else np.sqrt(d2)


def distance_to_pre_distance_factor(D, metric):
    """dD/dP elementwise. Entries that are 0 pass no gradient (TFA's zero mask for L2 and
    squared-L2, the clamp at 0 for angular), so duplicate points never give NaN or inf."""
    positive = D > 0
    if metric == "L2":  # D = sqrt(d2): dD/dd2 = 1 / (2 D)
        return np.where(positive, 0.5 / np.where(positive, D, 1), 0).astype(D.dtype)
    if metric == "squared-L2":
        return positive.astype(D.dtype)
    return -positive.astype(D.dtype)  # angular: D = 1 - cos


def pre_distance_backward(x, dP, metric):
    """dL/dx from dL/dP, where P is the squared-distance matrix ("L2", "squared-L2") or the cosine
    matrix ("angular"). P_ij depends on row i and row j, hence dP + dP^T."""
    return symmetric_pre_distance_backward(x, dP + dP.T, metric)


def symmetric_pre_distance_backward(x, S, metric):
    """dL/dx from S = dL/dP + (dL/dP)^T: one product with S."""
    if metric == "angular":
        n = l2_normalize(x)
        return normalize_backward(x, S @ n)  # d(n_i.n_j)/dn_i = n_j
    # d2_ij = |x_i|^2 + |x_j|^2 - 2 x_i.x_j  =>  dL/dx_i = 2 (sum_j S_ij) x_i - 2 (S x)_i
    return 2 * (S.sum(axis=1)[:, None] * x - S @ x)


def normalize_backward(x, grad_n):
    """dL/dx from dL/dn, n = x * r, r = rsqrt(max(|x|^2, eps)): dn/dx = r (I - n n^T), and only
    r I where the max clamps."""
    n, r, clamped = _normalized(x)
    radial = np.where(clamped, 0, np.einsum("ij,ij->i", grad_n, n))
    return (grad_n - radial[:, None] * n) * r[:, None]


def distance_backward(x, D, dD, metric):
    """dL/dx from dL/dD (dD is overwritten)."""
    dD *= distance_to_pre_distance_factor(D, metric)
    return pre_distance_backward(x, dD, metric)


def evaluate_dense(batch, rule, want_grad, reduction, sum_of):
    """(loss, TripletStats, gradient or None) for the backends that hold the whole distance
    matrix: sum_of(labels, D, margin, rule, anchors) gives the sum over the rule's triplets, its
    stats, its gradient with respect to D and the values of reduction="none" (per pair, or per
    anchor for "hard"); `Rule.scale` makes the mean."""
    D = pairwise_distances(batch.x, batch.metric)
    total, stats, dS, values = sum_of(
        batch.codes, D, D.dtype.type(batch.margin), rule, batch.anchors
    )
    if reduction == "none":
        return np.asarray(values, dtype=np.float64).astype(D.dtype), stats, None
    scale = rule.scale(stats.denominator, reduction)
    if not want_grad:
        return total * scale, stats, None
    return (
        total * scale,
        stats,
        distance_backward(batch.x, D, dS * D.dtype.type(scale), batch.metric),
    )

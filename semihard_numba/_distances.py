"""Pairwise distances exactly as TensorFlow Addons computes them, and their backward pass.

All arithmetic stays in the embeddings' dtype: computing float32 distances in float64 would pick a
different negative on near-ties, and the golden TFA data shows it.

The backward pass works on the "pre-distance" P each metric is built from: the squared distance
d2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j for "L2" and "squared-L2", the cosine n_i.n_j of the L2-normalised
rows for "angular". Backends hand over dL/dP; `pre_distance_backward` turns it into dL/dx.
"""

import numpy as np

from ._inputs import check_distance_matrix

L2_NORMALIZE_EPSILON = 1e-12  # tf.math.l2_normalize's default


def squared_norms(x):
    return np.einsum("ij,ij->i", x, x)


def _inverse_norms(x):
    """(|x_i|^2, rsqrt(max(|x_i|^2, 1e-12))) per row, as tf.math.l2_normalize computes them."""
    sq = squared_norms(x)
    return sq, 1 / np.sqrt(np.maximum(sq, x.dtype.type(L2_NORMALIZE_EPSILON)))


def l2_normalize(x):
    """tf.math.l2_normalize(x, axis=1): x * rsqrt(max(|x|^2, 1e-12))."""
    return x * _inverse_norms(x)[1][:, None]


# NumPy runs y @ y.T as a BLAS syrk, which does half the multiplications, and then mirrors the
# triangle it computed with a strided copy. For the narrow rows of metric learning that copy costs
# more than the multiplications it saves: at B=4096, D=128, float32, 80 ms against 32 ms for the
# same product as a plain gemm (`python -m bench.products`). Wide rows are compute-bound and syrk's halved work
# wins: from D ~ 1024 in float32 and ~ 512 in float64 here; 256 keeps a margin.
GRAM_GEMM_MAX_DIM = 256


def gram(y):
    """y @ y.T, as a plain matrix product (gemm) for rows of up to GRAM_GEMM_MAX_DIM entries."""
    return y @ (y.copy().T if y.shape[1] <= GRAM_GEMM_MAX_DIM else y.T)


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
    sq = squared_norms(x)
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
    sq, r = _inverse_norms(x)
    n = x * r[:, None]
    radial = np.where(sq >= L2_NORMALIZE_EPSILON, np.einsum("ij,ij->i", grad_n, n), 0)
    return (grad_n - radial[:, None] * n) * r[:, None]


def distance_backward(x, D, dD, metric):
    """dL/dx from dL/dD (dD is overwritten)."""
    dD *= distance_to_pre_distance_factor(D, metric)
    return pre_distance_backward(x, dD, metric)

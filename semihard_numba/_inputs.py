"""Validation and conversion of user input, shared by every backend.

Everything a kernel may assume is established here: labels are int32 class codes 0 .. C-1 of
shape (B,), embeddings are a C-contiguous float32 or float64 (B, D) array, the margin is finite. The caller's
arrays are never written to.
"""

import math
import numbers
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from ._metrics import NAMES as METRICS


@dataclass(frozen=True)
class Batch:
    """A validated batch: what the backends receive."""

    codes: np.ndarray  # (B,) int32 codes 0 .. C-1: equal codes <=> equal labels
    x: np.ndarray  # (B, D) float32 or float64, C-contiguous (NumPy, or a Numba device array for
    #               device input on "cuda"); its dtype is the precision of the computation
    out_dtype: np.dtype  # dtype of the returned loss and gradient (float16 input -> float16)
    margin: float
    metric: Union[str, Callable]
    anchors: np.ndarray = None  # (A,) int64, increasing: the rows that act as anchors

    def __post_init__(self):
        if self.anchors is None:
            object.__setattr__(self, "anchors", np.arange(self.x.shape[0], dtype=np.int64))

    @property
    def size(self):
        return self.x.shape[0]


def compute_dtype(dtype):
    """The float dtype the loss is computed in for embeddings of `dtype`, or a TypeError."""
    dtype = np.dtype(dtype)
    if dtype in (np.float32, np.float64):
        return dtype
    if dtype == np.float16:
        return np.dtype(np.float32)  # as TFA: half precision is computed in float32
    if dtype.kind in "iu":
        return np.dtype(np.float64)
    raise TypeError(
        f"embeddings must hold real numbers (float32, float64, float16 or integers), got dtype "
        f"{dtype}; convert them first, e.g. np.asarray(embeddings, dtype=np.float32)"
    )


def output_dtype(dtype):
    dtype = np.dtype(dtype)
    return dtype if dtype.kind == "f" else compute_dtype(dtype)


def check_embedding_shape(shape, n_labels):
    """Shape checks shared by host and device input."""
    if len(shape) != 2:
        raise ValueError(
            f"embeddings must be a 2-D array of shape (B, D), got shape {tuple(shape)}"
        )
    if shape[0] == 0:
        raise ValueError("the batch is empty: embeddings have B = 0 rows")
    if shape[1] == 0:
        raise ValueError(f"embeddings have D = 0 columns (shape {tuple(shape)})")
    if shape[0] != n_labels:
        raise ValueError(
            f"labels and embeddings disagree on the batch size: {n_labels} labels for "
            f"embeddings of shape {tuple(shape)}"
        )


def label_codes(labels):
    """Map labels of shape (B,) or (B, 1) to int32 codes 0 .. C-1, equal exactly where labels are
    (int32: the compiled loops compare them once per distance, and narrower is faster)."""
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise ValueError(f"labels must have shape (B,) or (B, 1), got shape {labels.shape}")
    if labels.dtype.kind not in "iuf":
        raise TypeError(
            f"labels must be integer or float class ids, got dtype {labels.dtype}; "
            "map them to integers first, e.g. with np.unique(labels, return_inverse=True)[1]"
        )
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise ValueError(f"labels contain NaN at positions {np.flatnonzero(np.isnan(labels))[:10]}")
    if labels.size == 0:
        return np.zeros(0, dtype=np.int32)
    return np.unique(labels, return_inverse=True)[1].reshape(-1).astype(np.int32)


def check_margin(margin):
    if isinstance(margin, np.ndarray) and margin.ndim == 0:  # np.array(1.0), as configs load it
        margin = margin[()]
    if isinstance(margin, (bool, np.bool_)) or not isinstance(margin, numbers.Real):
        raise TypeError(f"margin must be a real number, got {margin!r}")
    if not math.isfinite(float(margin)):
        raise ValueError(f"margin must be finite, got {margin!r}")
    return float(margin)


def check_metric(distance_metric):
    if callable(distance_metric) or distance_metric in METRICS:
        return distance_metric
    raise ValueError(
        f"unknown distance_metric {distance_metric!r}: use one of {', '.join(map(repr, METRICS))} "
        "or a callable returning the (B, B) distance matrix"
    )


def nonfinite_rows_error(rows):
    """The ValueError for embeddings with NaN or infinite values in `rows` (sorted indices)."""
    return ValueError(
        f"embeddings contain NaN or infinite values in rows {rows[:10].tolist()}"
        f"{' ...' if rows.size > 10 else ''}; pass check_finite=False to skip this check"
    )


def check_finite_embeddings(x):
    bad = ~np.isfinite(x)
    if bad.any():
        raise nonfinite_rows_error(np.unique(np.nonzero(bad)[0]))


def host_batch(labels, embeddings, margin, distance_metric, check_finite=True, anchors=None):
    """Validate NumPy-compatible input and return a `Batch` of host arrays."""
    codes = label_codes(labels)
    raw = np.asarray(embeddings)
    dtype = compute_dtype(raw.dtype)
    check_embedding_shape(raw.shape, codes.shape[0])
    x = np.ascontiguousarray(raw, dtype=dtype)
    if check_finite:
        check_finite_embeddings(x)
    return Batch(
        codes,
        x,
        output_dtype(raw.dtype),
        check_margin(margin),
        check_metric(distance_metric),
        check_anchors(anchors, x.shape[0]),
    )


def check_distance_matrix_type(shape, dtype, batch_size):
    """Shape and dtype checks of what a callable distance metric returned (host or device)."""
    if tuple(shape) != (batch_size, batch_size):
        raise ValueError(
            f"the distance_metric callable must return a ({batch_size}, {batch_size}) matrix, "
            f"got shape {tuple(shape)}"
        )
    if np.dtype(dtype).kind not in "iuf":
        raise TypeError(f"the distance_metric callable returned dtype {dtype}, expected floats")


NONFINITE_DISTANCES = "the distance_metric callable returned NaN or infinite distances"


def check_distance_matrix(D, batch_size, dtype):
    """Validate what a callable distance metric returned; return it as a C-contiguous `dtype` array."""
    D = np.asarray(D)
    check_distance_matrix_type(D.shape, D.dtype, batch_size)
    D = np.array(D, dtype=dtype, order="C")  # a private copy: the kernels may overwrite it
    if not np.isfinite(D).all():
        raise ValueError(NONFINITE_DISTANCES)
    return D


REDUCTIONS = ("mean", "sum", "none")


def check_flag(name, value):
    """A switch must be a bool: check_finite="no" would otherwise count as true."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_anchors(anchors, batch_size):
    """The rows that act as anchors, as increasing int64 indices: None (all rows), a slice,
    integer indices (negative ones count from the end) or a boolean mask of B entries."""
    B = batch_size
    if anchors is None:
        return np.arange(B, dtype=np.int64)
    if isinstance(anchors, slice):
        return np.sort(np.arange(B, dtype=np.int64)[anchors])
    index = np.asarray(anchors)
    if index.shape == (0,):  # [] is float64 to NumPy
        return np.zeros(0, dtype=np.int64)
    if index.dtype == np.bool_:
        if index.shape != (B,):
            raise ValueError(
                f"a boolean anchors mask needs one entry per row, B = {B}; got shape {index.shape}"
            )
        return np.flatnonzero(index).astype(np.int64)
    if index.dtype.kind not in "iu" or index.ndim > 1:
        got = f"shape {index.shape}" if index.ndim > 1 else f"dtype {index.dtype}"
        raise IndexError(
            "anchors must be None, a slice, integer row indices or a boolean mask of B = "
            f"{B} entries; got {got}"
        )
    index = index.reshape(-1).astype(np.int64)
    outside = index[(index < -B) | (index >= B)]
    if outside.size:
        raise IndexError(f"anchors {outside[:10].tolist()} are out of range for B = {B} rows")
    index = np.where(index < 0, index + B, index)
    unique = np.unique(index)
    if unique.size != index.size:
        repeated = np.flatnonzero(np.bincount(index, minlength=B) > 1)
        raise ValueError(f"anchors repeat rows {repeated[:10].tolist()}: each row once")
    return unique


def check_reduction(reduction, allow_none):
    if reduction not in REDUCTIONS or (reduction == "none" and not allow_none):
        allowed = REDUCTIONS if allow_none else REDUCTIONS[:2]
        raise ValueError(
            f"unknown reduction {reduction!r}: use one of {', '.join(map(repr, allowed))}"
            + (
                ""
                if allow_none
                else " (the gradient needs a scalar loss; 'none' is for the losses)"
            )
        )
    return reduction

"""Backend "numpy": TensorFlow Addons' tensor algebra, ported to NumPy.

This is the vectorized form people compare against: it tiles the distance matrix B times into a
(B*B, B) tensor so that every (anchor, positive) pair gets its own row of candidate negatives, then
takes masked minima and maxima. It needs O(B^3) memory, estimated before anything is allocated.
Masked minima and maxima use +-inf fill instead of TFA's offset-by-row-extremum trick, so the chosen
distances are exact.
"""

import os

import numpy as np

from ._distances import distance_backward, pairwise_distances
from ._mining import MiningResult

MAX_BYTES_ENV = "SEMIHARD_NUMBA_NUMPY_MAX_BYTES"
DEFAULT_MAX_BYTES = 2 * 1024**3


def memory_estimate(batch_size, itemsize):
    """Bytes of the largest live temporaries: the (B*B, B) tile, a masked copy, and three boolean
    masks of the same shape."""
    return batch_size**3 * (2 * itemsize + 3)


def _check_memory(batch_size, itemsize):
    raw = os.environ.get(MAX_BYTES_ENV, "").strip()
    try:
        limit = int(raw) if raw else DEFAULT_MAX_BYTES
    except ValueError:
        raise ValueError(f"{MAX_BYTES_ENV} must be a number of bytes, got {raw!r}") from None
    need = memory_estimate(batch_size, itemsize)
    if need > limit:
        raise MemoryError(
            f'backend="numpy" would need about {need / 2**30:.2f} GiB for B = {batch_size} '
            f"(it tiles a B^2 x B tensor), above the limit of {limit / 2**30:.2f} GiB; use "
            f'backend="cpu", or raise the limit with the environment variable {MAX_BYTES_ENV}'
        )


def _tfa_tensors(batch):
    """Everything TFA's triplet_semihard_loss computes, as (B, B) matrices indexed [anchor, positive]
    plus the (B, B, B) tie masks [positive, anchor, negative] needed for the gradient."""
    B = batch.size
    _check_memory(B, batch.x.dtype.itemsize)
    D = pairwise_distances(batch.x, batch.metric)
    adjacency = batch.codes[:, None] == batch.codes[None, :]
    adjacency_not = ~adjacency

    # Row p * B + a of the tile holds D[a, :] and is compared against D[a, p].
    tile = np.tile(D, (B, 1))
    outside_mask = np.tile(adjacency_not, (B, 1)) & (tile > D.T.reshape(-1, 1))
    found = outside_mask.any(axis=1).reshape(B, B).T  # [a, p]: a semi-hard negative exists
    outside_values = np.where(outside_mask, tile, np.inf).min(axis=1)  # hardest semi-hard negative
    outside = outside_values.reshape(B, B).T.astype(D.dtype)
    outside_ties = outside_mask & (tile == outside_values[:, None])
    del tile

    # The easiest negative; with no negative at all TFA's masked maximum gives the row minimum.
    has_negative = adjacency_not.any(axis=1)
    inside_values = np.where(
        has_negative, np.where(adjacency_not, D, -np.inf).max(axis=1), D.min(axis=1)
    ).astype(D.dtype)
    inside_ties = np.where(has_negative[:, None], adjacency_not, True) & (
        D == inside_values[:, None]
    )

    semi_hard_negatives = np.where(found, outside, inside_values[:, None])
    loss_mat = batch.x.dtype.type(batch.margin) + (D - semi_hard_negatives)
    mask_positives = adjacency & ~np.eye(B, dtype=bool)
    return D, found, loss_mat, mask_positives, outside_ties.reshape(B, B, B), inside_ties


def loss(batch):
    _, _, loss_mat, mask_positives, _, _ = _tfa_tensors(batch)
    num_positives = mask_positives.sum()
    if num_positives == 0:
        return 0.0  # TFA: 0 / 0 = NaN
    return np.maximum(loss_mat[mask_positives], 0).sum(dtype=np.float64) / num_positives


def mine(batch):
    D, found, loss_mat, mask_positives, outside_ties, inside_ties = _tfa_tensors(batch)
    anchor, positive = np.nonzero(mask_positives)
    has_negative = (batch.codes[:, None] != batch.codes[None, :]).any(axis=1)
    first_outside = outside_ties[positive, anchor].argmax(axis=1)
    first_inside = np.where(has_negative, inside_ties.argmax(axis=1), -1)
    semihard = found[anchor, positive]
    return MiningResult(
        anchor=anchor.astype(np.int64),
        positive=positive.astype(np.int64),
        negative=np.where(semihard, first_outside, first_inside[anchor]).astype(np.int64),
        semihard=semihard,
        loss=np.maximum(loss_mat[anchor, positive], 0).astype(D.dtype),
    )


def loss_and_grad(batch):
    D, found, loss_mat, mask_positives, outside_ties, inside_ties = _tfa_tensors(batch)
    num_positives = mask_positives.sum()
    if num_positives == 0:
        return 0.0, np.zeros_like(batch.x)
    loss = np.maximum(loss_mat[mask_positives], 0).sum(dtype=np.float64) / num_positives

    # dL/dD: +1 on D[a, p], -1 shared among the tied chosen negatives, for every active pair.
    # On the hinge (loss_mat == 0) TF's maximum still passes gradient to its first argument.
    weight = ((loss_mat >= 0) & mask_positives) / num_positives  # [a, p]
    dD = weight.astype(D.dtype)
    outside_weight = np.where(found, weight, 0).T / np.maximum(
        outside_ties.sum(axis=2), 1
    )  # [p, a]
    dD -= np.einsum("pa,pan->an", outside_weight.astype(D.dtype), outside_ties.astype(D.dtype))
    inside_weight = np.where(found, 0, weight).sum(axis=1) / inside_ties.sum(axis=1)  # [a]
    dD -= (inside_weight[:, None] * inside_ties).astype(D.dtype)
    return loss, distance_backward(batch.x, D, dD, batch.metric)

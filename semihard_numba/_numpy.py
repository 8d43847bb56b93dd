"""Backend "numpy": the reference implementations' tensor algebra, ported to NumPy.

This is the vectorized form people compare against. For "semihard" it is TFA's: the distance matrix
tiled B times into a (B*B, B) tensor so that every (anchor, positive) pair gets its own row of
candidate negatives, then masked minima and maxima. "batch-all" and "all-semihard" build the
(B, B, B) tensor of every triplet, as sentence-transformers' and pytorch-metric-learning's do. Both
need O(B^3) memory, estimated before anything is allocated. "hard" is TFA's masked extremes, O(B^2).
Masked minima and maxima use +-inf fill instead of TFA's offset-by-row-extremum trick, so the chosen
distances are exact.
"""

import os

import numpy as np

from ._distances import evaluate_dense, pairwise_distances
from ._mining import MiningResult
from ._rules import ALL_SEMIHARD, BATCH_ALL, BATCH_ALL_EPSILON, HARD, SEMIHARD, TripletStats

MAX_BYTES_ENV = "SEMIHARD_NUMBA_NUMPY_MAX_BYTES"
DEFAULT_MAX_BYTES = 2 * 1024**3


def memory_estimate(batch_size, itemsize):
    """Bytes of the largest live temporaries: two (B, B, B) float tensors (TFA's tile and a masked
    copy of it, or the triplet losses and their gradient) and three boolean masks of that shape."""
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


def _semihard_tensors(labels, D, margin):
    """Everything TFA's triplet_semihard_loss computes, as (B, B) matrices indexed [anchor, positive]
    plus the (B, B, B) tie masks [positive, anchor, negative] needed for the gradient."""
    B = labels.shape[0]
    adjacency = labels[:, None] == labels[None, :]
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
    loss_mat = margin + (D - semi_hard_negatives)
    mask_positives = adjacency & ~np.eye(B, dtype=bool)
    return found, loss_mat, mask_positives, outside_ties.reshape(B, B, B), inside_ties


def _selected(anchors, B):
    """The anchors as a boolean mask over the rows."""
    selected = np.zeros(B, dtype=bool)
    selected[anchors] = True
    return selected


def _semihard(labels, D, margin, rule, anchors):
    found, loss_mat, mask_positives, outside_ties, inside_ties = _semihard_tensors(
        labels, D, margin
    )
    mask_positives &= _selected(anchors, len(labels))[:, None]
    pairs = int(mask_positives.sum())
    losses = loss_mat[mask_positives]
    total = np.maximum(losses, 0).sum(dtype=np.float64)
    stats = TripletStats(pairs, pairs, int((losses > 0).sum()), int(found[mask_positives].sum()))

    # dS/dD: +1 on D[a, p], -1 shared among the tied chosen negatives, for every active pair.
    # On the hinge (loss_mat == 0) TF's maximum still passes gradient to its first argument.
    weight = ((loss_mat >= 0) & mask_positives).astype(D.dtype)  # [a, p]
    dS = weight.copy()
    outside_weight = np.where(found, weight, 0).T / np.maximum(
        outside_ties.sum(axis=2), 1
    )  # [p, a]
    dS -= np.einsum("pa,pan->an", outside_weight.astype(D.dtype), outside_ties.astype(D.dtype))
    inside_weight = np.where(found, 0, weight).sum(axis=1) / inside_ties.sum(axis=1)  # [a]
    dS -= (inside_weight[:, None] * inside_ties).astype(D.dtype)
    return total, stats, dS, np.maximum(losses, 0)


def _masked_extreme(D, mask, pick, fallback):
    """TFA's masked maximum / minimum per row (pick np.max / np.min), the row's `fallback`
    (np.min / np.max) where the mask is empty, and the mask of the entries tied at it."""
    has = mask.any(axis=1)
    empty = -np.inf if pick is np.max else np.inf
    value = np.where(has, pick(np.where(mask, D, empty), axis=1), fallback(D, axis=1)).astype(
        D.dtype
    )
    ties = np.where(has[:, None], mask, True) & (D == value[:, None])
    return value, ties


def _hard(labels, D, margin, rule, anchors):
    """TFA's triplet_hard_loss: masked maximum over the positives, minimum over the negatives."""
    B = labels.shape[0]
    selected = _selected(anchors, B)
    adjacency = labels[:, None] == labels[None, :]
    positives = adjacency & ~np.eye(B, dtype=bool)
    hp, hp_ties = _masked_extreme(D, positives, np.max, np.min)
    hn, hn_ties = _masked_extreme(D, ~adjacency, np.min, np.max)
    z = hp - hn
    if rule.soft:  # log1p(exp(z)) without overflow, and its slope, the sigmoid
        z64 = z.astype(np.float64)
        losses = np.maximum(z64, 0) + np.log1p(np.exp(-np.abs(z64)))
        slope = 0.5 * (1 + np.tanh(z64 / 2))
    else:
        hinge = z + margin
        losses = np.maximum(hinge, 0).astype(np.float64)
        slope = (hinge >= 0).astype(np.float64)  # on the hinge TF's maximum still passes
    losses, slope = np.where(selected, losses, 0), np.where(selected, slope, 0)
    stats = TripletStats(
        int(positives[selected].sum()),
        len(anchors),
        int((losses > 0).sum()),
        int((hp < hn)[selected].sum()),
    )
    dS = slope[:, None] * (hp_ties / hp_ties.sum(axis=1, keepdims=True))
    dS -= slope[:, None] * (hn_ties / hn_ties.sum(axis=1, keepdims=True))
    return losses.sum(), stats, dS.astype(D.dtype), losses[anchors]


def _every_triplet(labels, D, margin, rule, anchors):
    """ "batch-all" and "all-semihard" on the (B, B, B) tensor of every triplet [a, p, n], as
    sentence-transformers' and pytorch-metric-learning's vectorized forms build it."""
    B = labels.shape[0]
    adjacency = labels[:, None] == labels[None, :]
    positives = adjacency & ~np.eye(B, dtype=bool) & _selected(anchors, B)[:, None]
    valid = positives[:, :, None] & ~adjacency[:, None, :]
    d_ap, d_an = D[:, :, None], D[:, None, :]
    l = (d_ap - d_an) + margin
    if rule.name == BATCH_ALL:
        kept = valid
        counted = l > D.dtype.type(BATCH_ALL_EPSILON)
        passes = l >= 0  # sentence-transformers zeroes the negative losses in place
    else:  # 0 < d_an - d_ap <= margin, then a relu
        kept = valid & (d_an - d_ap > 0) & (d_an - d_ap <= margin)
        counted = passes = l > 0
    losses = np.where(kept & (l > 0), l, 0)
    total = losses.sum(dtype=np.float64)
    stats = TripletStats(
        int(positives.sum()),
        int((kept & counted).sum()),
        int((kept & (l > 0)).sum()),
        int((valid & (d_ap < d_an)).sum()),
    )
    g = (kept & passes).astype(D.dtype)
    return (
        total,
        stats,
        g.sum(axis=2) - g.sum(axis=1),
        losses.sum(axis=2, dtype=np.float64)[positives],
    )


_RULES = {SEMIHARD: _semihard, HARD: _hard, BATCH_ALL: _every_triplet, ALL_SEMIHARD: _every_triplet}


def _sum_of(labels, D, margin, rule, anchors):
    return _RULES[rule.name](labels, D, margin, rule, anchors)


def evaluate(batch, rule, want_grad, reduction="mean"):
    if rule.name != HARD:  # hard needs only (B, B) masks
        _check_memory(batch.size, batch.x.dtype.itemsize)
    return evaluate_dense(batch, rule, want_grad, reduction, _sum_of)


def mine(batch):
    _check_memory(batch.size, batch.x.dtype.itemsize)
    D = pairwise_distances(batch.x, batch.metric)
    margin = D.dtype.type(batch.margin)
    found, loss_mat, mask_positives, outside_ties, inside_ties = _semihard_tensors(
        batch.codes, D, margin
    )
    anchor, positive = np.nonzero(mask_positives & _selected(batch.anchors, batch.size)[:, None])
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

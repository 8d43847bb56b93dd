"""Backend "cpu": the post's loop compiled with Numba, parallel over anchors.

The distance matrix starts as the Gram matrix x @ x.T from NumPy's BLAS (the one cost that cannot be
avoided); each anchor then turns its own row into distances in place and runs the post's loop over
(positive, negative) on it. Nothing else of size B x B is allocated, and no two threads touch the
same row. Each anchor's sum goes to its own slot and the slots are added in a fixed order, so the
result does not depend on the number of threads.

An anchor with many positives sorts its negatives' distances once and finds each positive's
semi-hard negative by binary search (O(N log N) instead of O(P N)); the answer is the same.

Environment: SEMIHARD_NUMBA_CACHE=0 turns off Numba's on-disk cache of the compiled kernels.
"""

import os

import numpy as np
from numba import njit, prange

from ._distances import l2_normalize, pre_distance_backward, squared_norms
from ._inputs import check_distance_matrix
from ._mining import MiningResult

CACHE = os.environ.get("SEMIHARD_NUMBA_CACHE", "1") != "0"

# An anchor with at least this many positives searches sorted negatives instead of scanning them.
SORT_MIN_POSITIVES = 16

PRECOMPUTED, L2, SQUARED_L2, ANGULAR = 0, 1, 2, 3
METRIC_CODES = {"L2": L2, "squared-L2": SQUARED_L2, "angular": ANGULAR}


@njit(cache=CACHE)
def _to_distance_row(row, sq, a, metric):
    """Turn row a of the Gram matrix into row a of TFA's distance matrix, in the row's dtype
    (the NumPy twin is `pairwise_distances`; no float64 literal enters the arithmetic)."""
    if metric == ANGULAR:  # row holds n_a . n_j of the normalised embeddings
        for j in range(row.shape[0]):
            d = 1 - row[j]  # exact in float64, so rounding to float32 on store equals float32 math
            row[j] = d if d > 0 else 0
    elif metric == L2 or metric == SQUARED_L2:
        for j in range(row.shape[0]):
            d2 = (sq[a] + sq[j]) - (row[j] + row[j])
            if d2 <= 0 or j == a:
                row[j] = 0
            elif metric == L2:
                row[j] = np.sqrt(d2)
            else:
                row[j] = d2


@njit(cache=CACHE)
def _negative_distances(row, codes, a, positives, sort_min_positives, d_an, semihard):
    """The post's loop for one anchor: for each positive p (a skipped, in order) the distance to
    TFA's negative, written to d_an[k], and whether it was semi-hard, to semihard[k]."""
    B = row.shape[0]
    n_negatives = B - positives.shape[0]
    k = 0
    if n_negatives == 0:  # no negative at all: TFA's masked maximum is the row's minimum
        smallest = row.min()
        for p in positives:
            if p != a:
                d_an[k] = smallest
                semihard[k] = False
                k += 1
        return
    n_far = -1  # the easiest negative, used if no semi-hard negative is found
    for n in range(B):
        if codes[n] != codes[a] and (n_far == -1 or row[n] > row[n_far]):
            n_far = n
    if positives.shape[0] - 1 >= sort_min_positives:
        negatives = np.empty(n_negatives, dtype=row.dtype)
        j = 0
        for n in range(B):
            if codes[n] != codes[a]:
                negatives[j] = row[n]
                j += 1
        negatives.sort()
        for p in positives:
            if p == a:
                continue
            i = np.searchsorted(negatives, row[p], side="right")  # first negative farther than p
            semihard[k] = i < n_negatives
            d_an[k] = negatives[i] if i < n_negatives else row[n_far]
            k += 1
        return
    for p in positives:  # try all positives for the anchor
        if p == a:
            continue  # positive cannot be the same as the anchor
        n0 = -1
        for n in range(B):  # find suiting negative
            if codes[n] == codes[a]:
                continue
            if row[n] <= row[p]:
                continue  # semi-hard: strictly farther than the positive (TFA ignores the margin)
            if n0 == -1 or row[n] < row[n0]:
                n0 = n  # hardest semi-hard negative
        semihard[k] = n0 != -1
        d_an[k] = row[n0] if n0 != -1 else row[n_far]
        k += 1


@njit(cache=CACHE)
def _class_members(codes):
    """Members of each class in increasing index order: members[start[c]:start[c + 1]]."""
    members = np.argsort(codes, kind="mergesort")
    start = np.zeros(codes.max() + 2, dtype=np.int64)
    for c in codes:
        start[c + 1] += 1
    return members, np.cumsum(start)


@njit(parallel=True, cache=CACHE)
def _anchor_losses(codes, G, sq, metric, margin, sort_min_positives):
    """Sum of triplet losses per anchor (float64). G is overwritten with distances."""
    B = codes.shape[0]
    members, start = _class_members(codes)
    out = np.zeros(B)
    for a in prange(B):
        row = G[a]
        _to_distance_row(row, sq, a, metric)
        positives = members[start[codes[a]] : start[codes[a] + 1]]
        d_an = np.empty(positives.shape[0], dtype=row.dtype)
        semihard = np.empty(positives.shape[0], dtype=np.bool_)
        _negative_distances(row, codes, a, positives, sort_min_positives, d_an, semihard)
        k = 0
        total = 0.0
        for p in positives:
            if p != a:
                l = margin + (row[p] - d_an[k])
                if l > 0:
                    total += l
                k += 1
        out[a] = total
    return out


@njit(cache=CACHE)
def _distance_derivative(d, metric):
    """dD/dP for one entry (P: squared distance, or cosine for angular); 0 passes no gradient."""
    if d <= 0:
        return 0.0
    if metric == L2:
        return 0.5 / d
    if metric == SQUARED_L2:
        return 1.0
    return -1.0


@njit(parallel=True, cache=CACHE)
def _mine(codes, G, sq, metric, margin, sort_min_positives, want_grad, out_anchor, out_positive,
          out_negative, out_semihard, out_loss):
    """Per-pair mining. Fills out_* (one entry per ordered positive pair, by anchor then positive).
    With want_grad, row a of G ends as dL/dP[a, :] up to the factor 1 / (number of pairs)."""
    B = codes.shape[0]
    members, start = _class_members(codes)
    offset = np.zeros(B + 1, dtype=np.int64)
    for a in range(B):
        offset[a + 1] = offset[a] + start[codes[a] + 1] - start[codes[a]] - 1
    for a in prange(B):
        row = G[a]
        _to_distance_row(row, sq, a, metric)
        positives = members[start[codes[a]] : start[codes[a] + 1]]
        n_pairs = positives.shape[0] - 1
        d_an = np.empty(n_pairs + 1, dtype=row.dtype)
        semihard = np.empty(n_pairs + 1, dtype=np.bool_)
        _negative_distances(row, codes, a, positives, sort_min_positives, d_an, semihard)
        has_negative = positives.shape[0] < B
        # Ties: the negatives at exactly the chosen distance. Sorted negatives find them by binary
        # search; few positives scan the row.
        sorted_search = n_pairs >= sort_min_positives and has_negative
        if sorted_search:
            order = np.empty(B - positives.shape[0], dtype=np.int64)
            j = 0
            for n in range(B):
                if codes[n] != codes[a]:
                    order[j] = n
                    j += 1
            values = row[order]
            perm = np.argsort(values, kind="mergesort")  # stable: ties keep increasing index
            order = order[perm]
            values = values[perm]
        grad_row = np.zeros(B, dtype=row.dtype)
        k = 0
        for p in positives:
            if p == a:
                continue
            l = margin + (row[p] - d_an[k])
            pair = offset[a] + k
            out_anchor[pair] = a
            out_positive[pair] = p
            out_semihard[pair] = semihard[k]
            out_loss[pair] = l if l > 0 else 0
            if sorted_search:
                lo = np.searchsorted(values, d_an[k], side="left")
                hi = np.searchsorted(values, d_an[k], side="right")
                out_negative[pair] = order[lo]
            else:
                lo = -1
                hi = 0
                for n in range(B):
                    if (codes[n] != codes[a] or not has_negative) and row[n] == d_an[k]:
                        if lo == -1:
                            lo = n
                        hi += 1
                out_negative[pair] = lo if has_negative else -1
            if want_grad and l >= 0:  # on the hinge TF's maximum still passes gradient
                grad_row[p] += _distance_derivative(row[p], metric)
                share = -_distance_derivative(d_an[k], metric)
                if sorted_search:
                    for i in range(lo, hi):
                        grad_row[order[i]] += share / (hi - lo)
                else:
                    for n in range(B):
                        if (codes[n] != codes[a] or not has_negative) and row[n] == d_an[k]:
                            grad_row[n] += share / hi
            k += 1
        if want_grad:
            row[:] = grad_row


def _gram(batch):
    """(G, squared norms, metric code): the Gram matrix the kernels turn into distances in place."""
    x = batch.x
    if callable(batch.metric):
        D = check_distance_matrix(batch.metric(x), x.shape[0], x.dtype)
        return D, np.zeros(0, dtype=x.dtype), PRECOMPUTED
    metric = METRIC_CODES[batch.metric]
    if metric == ANGULAR:
        n = l2_normalize(x)
        return n @ n.T, np.zeros(0, dtype=x.dtype), metric
    return x @ x.T, squared_norms(x), metric


def _pair_count(codes):
    counts = np.bincount(codes)
    return int((counts * (counts - 1)).sum())


def loss(batch, sort_min_positives=SORT_MIN_POSITIVES):
    G, sq, metric = _gram(batch)
    margin = batch.x.dtype.type(batch.margin)
    per_anchor = _anchor_losses(batch.codes, G, sq, metric, margin, sort_min_positives)
    n_pairs = _pair_count(batch.codes)
    return per_anchor.sum() / n_pairs if n_pairs else 0.0  # TFA: 0 / 0 = NaN


def _mine_arrays(batch, want_grad, sort_min_positives):
    G, sq, metric = _gram(batch)
    n_pairs = _pair_count(batch.codes)
    result = MiningResult(
        anchor=np.empty(n_pairs, dtype=np.int64),
        positive=np.empty(n_pairs, dtype=np.int64),
        negative=np.empty(n_pairs, dtype=np.int64),
        semihard=np.empty(n_pairs, dtype=np.bool_),
        loss=np.empty(n_pairs, dtype=batch.x.dtype),
    )
    margin = batch.x.dtype.type(batch.margin)
    _mine(batch.codes, G, sq, metric, margin, sort_min_positives, want_grad, result.anchor,
          result.positive, result.negative, result.semihard, result.loss)
    return G, result


def mine(batch, sort_min_positives=SORT_MIN_POSITIVES):
    return _mine_arrays(batch, False, sort_min_positives)[1]


def loss_and_grad(batch, sort_min_positives=SORT_MIN_POSITIVES):
    dP, result = _mine_arrays(batch, True, sort_min_positives)
    losses = result.loss
    if losses.size == 0:
        return 0.0, np.zeros_like(batch.x)
    dP /= losses.size
    return losses.sum(dtype=np.float64) / losses.size, pre_distance_backward(batch.x, dP, batch.metric)

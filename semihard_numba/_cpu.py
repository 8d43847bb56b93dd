"""Backend "cpu": the post's loop compiled with Numba, parallel over anchors.

The distance matrix starts as the Gram matrix x @ x.T from NumPy's BLAS (the one cost that cannot be
avoided; `gram`); each anchor then turns its own row into distances in place and runs the post's
loop over (positive, negative) on it. Nothing else of size B x B is allocated, and no two threads
touch the same row. Each anchor's sum goes to its own slot and the slots are added in a fixed order,
so the result does not depend on the number of threads.

Few positives scan the row linearly, comparing distances as order-preserving integers (which
vectorize). An anchor with many positives avoids the O(P N) scan: it bucket-sorts its negatives by
distance and looks each positive up in its own bucket (a radix sort and bisection take over where
distances clump). Both paths give the same numbers (tests/test_properties.py)."""

from contextlib import contextmanager

import numba
import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._distances import (
    gram,
    l2_normalize,
    normalize_backward,
    squared_norms,
    symmetric_pre_distance_backward,
)
from ._inputs import check_distance_matrix
from ._mining import MiningResult
from ._radix_sort import radix_argsort, sign_bit, sort_key

# An anchor with at least this many positives searches sorted negatives instead of scanning them.
SORT_MIN_POSITIVES = 16

NONE = np.uint64(0xFFFFFFFFFFFFFFFF)  # larger than the sort key of any float

# The bucket sort of an anchor's negatives: twice as many buckets as negatives (fewer shared
# buckets to sort within; measured faster than 1 or 4), and a radix sort instead as soon as one
# bucket would hold more negatives than BUCKET_MAX.
BUCKETS_PER_NEGATIVE = 2
BUCKET_MAX = 16

# Smaller batches run on one thread: right after NumPy's BLAS product its threads still spin, and
# waking Numba's threads beside them cost ~8 ms here, far more than the kernel itself below this.
SERIAL_MAX_BATCH = 1024

# The gradient walks the nonzeros of dL/dP while their share of a row is below 1 / this.
SPARSE_BACKWARD_MAX_DENSITY = 16

PRECOMPUTED, L2, SQUARED_L2, ANGULAR = 0, 1, 2, 3
METRIC_CODES = {"L2": L2, "squared-L2": SQUARED_L2, "angular": ANGULAR}


@njit(cache=CACHE)
def _to_distance_row(row, sq, a, metric):
    """Turn row a of the Gram matrix into row a of TFA's distance matrix, in the row's dtype
    (the NumPy twin is `pairwise_distances`; no float64 literal enters the arithmetic)."""
    one = row.dtype.type(1)
    zero = row.dtype.type(0)
    if metric == ANGULAR:  # row holds n_a . n_j of the normalised embeddings
        for j in range(row.shape[0]):
            d = one - row[j]
            row[j] = d if d > 0 else zero
    elif metric == L2 or metric == SQUARED_L2:
        for j in range(row.shape[0]):
            d2 = (sq[a] + sq[j]) - (row[j] + row[j])
            if d2 <= 0 or j == a:
                row[j] = zero
            elif metric == L2:
                row[j] = np.sqrt(d2)
            else:
                row[j] = d2


@njit(cache=CACHE)
def _bucket(value, lo, scale, n_buckets):
    """The bucket of a distance: never decreases as the distance grows (all in float64, clamped
    before the conversion to an integer), so equal distances share a bucket."""
    t = (np.float64(value) - lo) * scale
    return np.int64(min(max(t, 0.0), n_buckets - 1.0))


@njit(cache=CACHE)
def _deal_into_buckets(row, codes, a, n_negatives):
    """a's negatives dealt into BUCKETS_PER_NEGATIVE buckets per negative, spread evenly over their
    range (see `_bucket`), in index order within a bucket: (order, values, start, lo, scale) with
    bucket b holding the negatives order[start[b]:start[b + 1]], at distances values[...]. Where a
    bucket would hold more than BUCKET_MAX negatives (clumps of distances), start is empty and order
    lists the negatives in index order."""
    negatives = np.empty(n_negatives, dtype=np.int64)
    j = 0
    for n in range(row.shape[0]):
        if codes[n] != codes[a]:
            negatives[j] = n
            j += 1
    distances = row[negatives]
    lo = np.float64(distances.min())
    span = np.float64(distances.max()) - lo
    n_buckets = BUCKETS_PER_NEGATIVE * n_negatives
    scale = n_buckets / span if span > 0 else 0.0
    if not np.isfinite(scale):  # a span below ~1e-305: one bucket, and the radix sort takes over
        scale = 0.0
    bucket = np.empty(n_negatives, dtype=np.int64)
    start = np.zeros(n_buckets + 1, dtype=np.int64)
    for j in range(n_negatives):
        bucket[j] = _bucket(distances[j], lo, scale, n_buckets)
        start[bucket[j] + 1] += 1
    for b in range(n_buckets):
        if start[b + 1] > BUCKET_MAX:
            return negatives, distances, start[:0], lo, scale
        start[b + 1] += start[b]
    order = np.empty(n_negatives, dtype=np.int64)
    values = np.empty(n_negatives, dtype=row.dtype)
    fill = start[:-1].copy()
    for j in range(n_negatives):
        order[fill[bucket[j]]] = negatives[j]
        values[fill[bucket[j]]] = distances[j]
        fill[bucket[j]] += 1
    return order, values, start, lo, scale


@njit(cache=CACHE)
def _sorted_negatives(row, bits, codes, a, n_negatives):
    """a's negatives in order of increasing distance (ties by index), their distances, and where
    each bucket starts among them (`_deal_into_buckets`; empty if a radix sort was used instead).
    A bucket sort: deal, then an insertion sort that never crosses a bucket boundary."""
    order, values, start, lo, scale = _deal_into_buckets(row, codes, a, n_negatives)
    if start.shape[0] == 0:
        order = radix_argsort(bits, order)
        return order, row[order], start, lo, scale
    largest = values[0]  # of those sorted so far; a bucket's values are below the next bucket's
    for i in range(1, n_negatives):
        value = values[i]
        if value >= largest:  # most often: in place already
            largest = value
            continue
        index, k = order[i], i
        while k > 0 and values[k - 1] > value:  # strict: ties keep their index order
            values[k], order[k] = values[k - 1], order[k - 1]
            k -= 1
        values[k], order[k] = value, index
    return order, values, start, lo, scale


@njit(cache=CACHE)
def _negative_distances(row, bits, codes, a, positives, sorted_negatives, d_an, semihard, chosen):
    """The post's loop for one anchor: for each positive positives[k] the distance to TFA's
    negative, written to d_an[k], whether it was semi-hard, to semihard[k], and where it is, to
    chosen[k]: its index in the row, or with `sorted_negatives` (the output of _sorted_negatives
    but the order; empty distances for a linear scan) its position among them. Ties: the first
    one. `bits` is the row's memory viewed as unsigned integers."""
    negatives_sorted, start, lo, scale = sorted_negatives
    B = row.shape[0]
    n_negatives = B - positives.shape[0] - 1
    if n_negatives == 0:  # no negative at all: TFA's masked maximum is the row's minimum
        smallest = np.argmin(row)
        chosen[:] = smallest
        d_an[:] = row[smallest]
        semihard[:] = False
        return
    if negatives_sorted.shape[0] > 0:
        far = n_negatives - 1  # the easiest negative, used if no semi-hard negative is found
        while far > 0 and negatives_sorted[far - 1] == negatives_sorted[n_negatives - 1]:
            far -= 1
        for k, p in enumerate(positives):
            if start.shape[0] > 0:  # the first one farther than p: in p's bucket, or next
                b = _bucket(row[p], lo, scale, start.shape[0] - 1)
                i = start[b]
                while i < start[b + 1] and negatives_sorted[i] <= row[p]:
                    i += 1
            else:
                i = np.searchsorted(negatives_sorted, row[p], side="right")
            semihard[k] = i < n_negatives
            chosen[k] = i if i < n_negatives else far
            d_an[k] = negatives_sorted[chosen[k]]
        return
    # Distances compared as order-preserving unsigned integers (`sort_key`): integer minima
    # vectorize, float minima do not without fast-math. NONE marks "not a negative".
    sign = sign_bit(bits)
    keys = np.empty(B, dtype=np.uint64)
    far = np.uint64(0)  # the easiest negative, used if no semi-hard negative is found
    for n in range(B):
        keys[n] = NONE if codes[n] == codes[a] else sort_key(bits[n], sign)
        if keys[n] != NONE:
            far = max(far, keys[n])
    for k, p in enumerate(positives):  # try all positives for the anchor
        positive = sort_key(bits[p], sign)
        nearest = NONE
        for n in range(B):  # find suiting negative: the hardest one strictly farther than p
            nearest = min(
                nearest, keys[n] if keys[n] > positive else NONE
            )  # TFA ignores the margin
        semihard[k] = nearest != NONE
        target = nearest if nearest != NONE else far
        n0 = 0
        while keys[n0] != target:  # the first negative at that distance
            n0 += 1
        chosen[k] = n0
        d_an[k] = row[n0]


@njit(cache=CACHE)
def _class_members(codes):
    """Members of each class in increasing index order: members[start[c]:start[c + 1]]."""
    members = np.argsort(codes, kind="mergesort")
    start = np.zeros(codes.max() + 2, dtype=np.int64)
    for c in codes:
        start[c + 1] += 1
    return members, np.cumsum(start)


@njit(cache=CACHE)
def _mine_anchor(G, G_bits, sq, codes, a, metric, members, start, sort_min_positives):
    """Everything the kernels share for anchor a: turn row a of G into distances, then choose the
    negative of each positive. Returns (positives, order, values, d_an, semihard, chosen); order
    and values are a's negatives sorted by distance when the sorted search was used, else empty.
    chosen: see _negative_distances."""
    row = G[a]
    _to_distance_row(row, sq, a, metric)
    same = members[start[codes[a]] : start[codes[a] + 1]]
    positives = np.empty(same.shape[0] - 1, dtype=np.int64)
    k = 0
    for p in same:
        if p != a:  # positive cannot be the same as the anchor
            positives[k] = p
            k += 1
    n_negatives = row.shape[0] - same.shape[0]
    order = positives[:0]
    values = row[:0]
    bucket_start = positives[:0]
    lo = scale = 0.0
    d_an = np.empty(positives.shape[0], dtype=row.dtype)
    semihard = np.empty(positives.shape[0], dtype=np.bool_)
    chosen = np.empty(positives.shape[0], dtype=np.int64)
    if positives.shape[0] >= sort_min_positives and n_negatives > 0:
        order, values, bucket_start, lo, scale = _sorted_negatives(
            row, G_bits[a], codes, a, n_negatives
        )
    sorted_negatives = (values, bucket_start, lo, scale)
    _negative_distances(
        row, G_bits[a], codes, a, positives, sorted_negatives, d_an, semihard, chosen
    )
    return positives, order, values, d_an, semihard, chosen


@njit(cache=CACHE)
def _is_candidate(codes, a, n, has_negative):
    """Whether n can be a's negative: another label, or anything when a has no negative (TFA then
    uses the row's minimum)."""
    return codes[n] != codes[a] or not has_negative


@njit(cache=CACHE)
def _share_among_ties(grad_row, row, codes, a, has_negative, chosen, amount):
    """Subtract `amount` from grad_row, shared equally among the candidates at exactly the distance
    of row[chosen], the first of them in the row (the linear search's ties)."""
    count = 0
    for n in range(chosen, row.shape[0]):
        count += (row[n] == row[chosen]) & _is_candidate(codes, a, n, has_negative)
    if count == 1:  # most often: no second pass
        grad_row[chosen] -= amount
        return
    for n in range(chosen, row.shape[0]):
        if row[n] == row[chosen] and _is_candidate(codes, a, n, has_negative):
            grad_row[n] -= amount / count


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
def _anchor_losses(codes, G, G_bits, sq, metric, margin, sort_min_positives, want_grad, inv_pairs):
    """Sum of triplet losses per anchor (float64). G is overwritten with distances, or with
    want_grad with dL/dP, P the squared distance or the cosine; inv_pairs = 1 / number of pairs."""
    B = codes.shape[0]
    members, start = _class_members(codes)
    out = np.zeros(B)
    for a in prange(B):
        positives, order, values, d_an, _, chosen = _mine_anchor(
            G, G_bits, sq, codes, a, metric, members, start, sort_min_positives
        )
        row = G[a]
        has_negative = positives.shape[0] + 1 < B
        grad_row = np.zeros(B if want_grad else 0, dtype=row.dtype)
        total = 0.0
        for k, p in enumerate(positives):
            l = margin + (row[p] - d_an[k])
            if l > 0:
                total += l
            if want_grad and l >= 0:  # on the hinge TF's maximum still passes gradient
                grad_row[p] += inv_pairs  # dL/dD
                # negatives tied at the chosen distance share its gradient equally
                if order.shape[0] > 0:  # sorted: they follow it (inline: a call costs ~15 ns)
                    c = chosen[k]
                    end = c + 1
                    while end < values.shape[0] and values[end] == values[c]:
                        end += 1
                    share = inv_pairs / (end - c)
                    for i in range(c, end):
                        grad_row[order[i]] -= share
                else:
                    _share_among_ties(grad_row, row, codes, a, has_negative, chosen[k], inv_pairs)
        out[a] = total
        if want_grad:  # dL/dP = dL/dD * dD/dP, one vectorizable pass instead of a division per pair
            for n in range(B):
                row[n] = grad_row[n] * _distance_derivative(row[n], metric)
    return out


@njit(parallel=True, cache=CACHE)
def _mine_pairs(
    codes,
    G,
    G_bits,
    sq,
    metric,
    margin,
    sort_min_positives,
    out_anchor,
    out_positive,
    out_negative,
    out_semihard,
    out_loss,
):
    """Fill out_* with one entry per ordered positive pair, by anchor then positive."""
    B = codes.shape[0]
    members, start = _class_members(codes)
    offset = np.zeros(B + 1, dtype=np.int64)
    for a in range(B):
        offset[a + 1] = offset[a] + start[codes[a] + 1] - start[codes[a]] - 1
    for a in prange(B):
        positives, order, values, d_an, semihard, chosen = _mine_anchor(
            G, G_bits, sq, codes, a, metric, members, start, sort_min_positives
        )
        row = G[a]
        has_negative = positives.shape[0] + 1 < B
        for k, p in enumerate(positives):
            pair = offset[a] + k
            l = margin + (row[p] - d_an[k])
            out_anchor[pair] = a
            out_positive[pair] = p
            out_negative[pair] = -1
            if has_negative:
                out_negative[pair] = order[chosen[k]] if order.shape[0] > 0 else chosen[k]
            out_semihard[pair] = semihard[k]
            out_loss[pair] = l if l > 0 else 0


@njit(parallel=True, cache=CACHE)
def _sparse_backward(W, y, self_weight):
    """h_i = sum_j (W_ij + W_ji) (self_weight * y_i - y_j), paying O(D) only for nonzero W_ij.
    Rows first (one thread per row), then columns (one thread per tile of 64 columns), so each h_i
    is summed in a fixed order whatever the thread count."""
    B, D = y.shape
    h = np.zeros_like(y)
    for i in prange(B):
        for j in range(B):
            w = W[i, j]
            if w != 0:
                for d in range(D):
                    h[i, d] += w * (self_weight * y[i, d] - y[j, d])
    tile = 64
    for t in prange((B + tile - 1) // tile):
        for a in range(B):
            for i in range(t * tile, min(B, t * tile + tile)):
                w = W[a, i]
                if w != 0:
                    for d in range(D):
                        h[i, d] += w * (self_weight * y[i, d] - y[a, d])
    return h


@njit(cache=CACHE)
def _add_transposed_tile_row(W, ti, tile):
    """The tiles (ti, tj >= ti) of W += W.T: each tile pair is read once and written once."""
    B = W.shape[0]
    lower = np.empty((tile, tile), dtype=W.dtype)
    for tj in range(ti, (B + tile - 1) // tile):
        i0, j0 = ti * tile, tj * tile
        i1, j1 = min(B, i0 + tile), min(B, j0 + tile)
        for j in range(j0, j1):  # the mirror tile, read along its rows
            for i in range(i0, i1):
                lower[i - i0, j - j0] = W[j, i]
        for i in range(i0, i1):
            for j in range(j0, j1):
                W[i, j] += lower[i - i0, j - j0]
        if tj != ti:
            for j in range(j0, j1):
                for i in range(i0, i1):
                    W[j, i] = W[i, j]


@njit(parallel=True, cache=CACHE)
def _symmetrize(W):
    """W += W.T in place, by 8 x 8 tiles (fastest here: 14-17 ms at B=4096 float32, against 24 ms
    for one product with x; `python -m bench.products`). Iteration h takes tile rows h and
    n - 1 - h, so all do equal work."""
    tile = 8
    n = (W.shape[0] + tile - 1) // tile
    for h in prange((n + 1) // 2):
        _add_transposed_tile_row(W, h, tile)
        if n - 1 - h != h:
            _add_transposed_tile_row(W, n - 1 - h, tile)


def _gram(batch):
    """(G, squared norms, metric code, y): the Gram matrix G = y @ y.T that the kernels turn into
    distances in place; y is x, or its normalised rows for "angular"."""
    x = batch.x
    if callable(batch.metric):
        D = check_distance_matrix(batch.metric(x), x.shape[0], x.dtype)
        return D, np.zeros(0, dtype=x.dtype), PRECOMPUTED, x
    metric = METRIC_CODES[batch.metric]
    if metric == ANGULAR:
        n = l2_normalize(x)
        return gram(n), np.zeros(0, dtype=x.dtype), metric, n
    return gram(x), squared_norms(x), metric, x


@contextmanager
def _threads_for(batch_size):
    """Run the kernels inside on one thread for small batches (results do not depend on it)."""
    saved = numba.get_num_threads()
    if batch_size < SERIAL_MAX_BATCH:
        numba.set_num_threads(1)
    try:
        yield
    finally:
        numba.set_num_threads(saved)


def _bits(G):
    """G's memory viewed as unsigned integers of the same width, for the radix sort."""
    return G.view(np.uint32 if G.dtype == np.float32 else np.uint64)


def _pair_count(codes):
    counts = np.bincount(codes)
    return int((counts * (counts - 1)).sum())


def loss(batch, sort_min_positives=SORT_MIN_POSITIVES):
    G, sq, metric, _ = _gram(batch)
    margin = batch.x.dtype.type(batch.margin)
    with _threads_for(batch.size):
        per_anchor = _anchor_losses(
            batch.codes, G, _bits(G), sq, metric, margin, sort_min_positives, False, 0.0
        )
    n_pairs = _pair_count(batch.codes)
    return per_anchor.sum() / n_pairs if n_pairs else 0.0  # TFA: 0 / 0 = NaN


def loss_and_grad(
    batch,
    sort_min_positives=SORT_MIN_POSITIVES,
    sparse_backward_max_density=SPARSE_BACKWARD_MAX_DENSITY,
):
    G, sq, metric, y = _gram(batch)
    margin = batch.x.dtype.type(batch.margin)
    n_pairs = _pair_count(batch.codes)
    if n_pairs == 0:
        return 0.0, np.zeros_like(batch.x)
    with _threads_for(batch.size):
        per_anchor = _anchor_losses(
            batch.codes, G, _bits(G), sq, metric, margin, sort_min_positives, True, 1.0 / n_pairs
        )
    loss = per_anchor.sum() / n_pairs
    # G now holds dL/dP, with at most 2 (n_pairs / B) nonzeros per row plus ties. Small classes
    # leave it sparse: walk its nonzeros. Large classes fill it: one BLAS product is cheaper.
    B = batch.size
    if 2 * n_pairs * sparse_backward_max_density < B * B:
        with _threads_for(B):
            h = _sparse_backward(G, y, 0.0 if metric == ANGULAR else 1.0)
        return loss, normalize_backward(batch.x, -h) if metric == ANGULAR else 2 * h
    with _threads_for(B):
        _symmetrize(G)  # S = dL/dP + its transpose: one product with S instead of two with dL/dP
    return loss, symmetric_pre_distance_backward(batch.x, G, batch.metric)


def mine(batch, sort_min_positives=SORT_MIN_POSITIVES):
    G, sq, metric, _ = _gram(batch)
    n_pairs = _pair_count(batch.codes)
    result = MiningResult(
        anchor=np.empty(n_pairs, dtype=np.int64),
        positive=np.empty(n_pairs, dtype=np.int64),
        negative=np.empty(n_pairs, dtype=np.int64),
        semihard=np.empty(n_pairs, dtype=np.bool_),
        loss=np.empty(n_pairs, dtype=batch.x.dtype),
    )
    margin = batch.x.dtype.type(batch.margin)
    with _threads_for(batch.size):
        _mine_pairs(
            batch.codes,
            G,
            _bits(G),
            sq,
            metric,
            margin,
            sort_min_positives,
            result.anchor,
            result.positive,
            result.negative,
            result.semihard,
            result.loss,
        )
    return result

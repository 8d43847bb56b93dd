"""Backend "cpu": the post's loop compiled with Numba, parallel over anchors.

The distance matrix starts as the Gram matrix y @ y.T from NumPy's BLAS (`_distances.gram`), the
one cost every implementation pays. Then `_anchor_loop` runs the post's loops: every anchor turns
its own row into distances in place (`_metrics.distance`) and, for every positive, takes its
negative from the post's search (`_loop.choose_negative`) or, when the anchor has at least
SORTED_SEARCH_MIN_POSITIVES positives, from its sorted negatives (`_sorted_search`). Nothing else of
size B x B is allocated and no two threads touch the same row. Each anchor's sum goes to its own
slot and the slots are added in a fixed order, so the result does not depend on the thread count.

Every kernel is compiled twice from one body, serial and parallel (pynndescent's habit), each only
when first called. The serial twin runs batches below SERIAL_MAX_BATCH, where waking threads costs
more than it saves, and every call in a process forked from this one: GNU OpenMP, Numba's usual
threading layer on Linux, kills a forked child that enters a parallel region.
"""

import os
import types
from typing import NamedTuple

import numpy as np
from numba import njit, prange

from ._cache import CACHE
from ._classes import class_tables
from ._distances import (
    gram,
    l2_normalize,
    normalize_backward,
    squared_norms,
    symmetric_pre_distance_backward,
)
from ._inputs import check_distance_matrix
from ._loop import choose_negative, count_negatives_at, smallest_entry
from ._metrics import ANGULAR, PRECOMPUTED, code, distance, pre_distance_gradient
from ._mining import MiningResult
from ._sorted_search import BUCKET_MAX, sorted_search

# An anchor with at least this many positives sorts its negatives instead of running the post's
# loop for each positive: about where the two cost the same (bench/README.md, "Core targets").
SORTED_SEARCH_MIN_POSITIVES = 24

# Smaller batches run on the serial twins (bench/README.md, "Threads").
SERIAL_MAX_BATCH = 1024

# The gradient walks the nonzeros of dL/dP while their share of a row is below 1 / this.
SPARSE_BACKWARD_MAX_DENSITY = 16


def _serial_and_parallel(body):
    """(serial, parallel) kernels compiled from one body. The parallel twin is a copy of the
    function under another __qualname__: Numba's disk cache keys on the name, not on
    parallel=True, and would otherwise hand one twin the other's machine code (numba#6845)."""
    twin = types.FunctionType(
        body.__code__, body.__globals__, body.__name__, body.__defaults__, body.__closure__
    )
    twin.__qualname__ = body.__qualname__ + "_parallel"
    return njit(cache=CACHE)(body), njit(parallel=True, cache=CACHE)(twin)


_forked = False


def _after_fork_in_child():
    global _forked
    _forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)


def _pick(kernels, batch_size):
    serial, parallel = kernels
    return serial if batch_size < SERIAL_MAX_BATCH or _forked else parallel


def _anchor_loops(with_sorted_search):
    """The (serial, parallel) `_anchor_loop` kernels, with the sorted search of large classes
    compiled in or not: Numba drops the branches on the constant `with_sorted_search` before
    compiling,
    and ordinary batches never pay the sort's compile time."""

    def _anchor_loop(
        labels, classes, G, keys, key_range, sq, metric, margin, search, gradient, mined, sums
    ):
        """The post's loops over a batch, for every anchor at once (parallel twin: one anchor per
        thread at a time).

        labels: (B,) class codes; classes = (members, start) of `_classes.Classes`.
        G: (B, B), the Gram matrix, turned into distances row by row in place (a callable
        metric's matrix is used as it is). keys: G's distances as order keys (`order_keys`),
        key_range = (above, below) every key.
        search = (sorted_search_min_positives, bucket_max), see `_sorted_search`.
        gradient = (want, weight): with want, row a of G ends as dL/dP[a, :]; weight = 1 / pairs.
        mined: a `MinedPairs`, one entry per pair where mined.want.
        sums[a]: anchor a's sum of triplet losses (float64).
        """
        N = labels.shape[0]
        members, start = classes
        above, below = key_range
        sorted_search_min_positives, bucket_max = search
        want_grad, weight = gradient
        zero = G.dtype.type(0)
        for a in prange(N):  # give every embedding in the batch the chance to be an anchor
            distances = G[a]
            if metric != PRECOMPUTED:
                for n in range(N):
                    distances[n] = distance(distances[n], sq, a, n, metric)
            keys_a = keys[a]
            same = members[start[labels[a]] : start[labels[a] + 1]]
            n_negatives = N - same.shape[0]
            sort = n_negatives > 0 and same.shape[0] - 1 >= sorted_search_min_positives
            if with_sorted_search and sort:  # the second path: sort a's negatives once
                first = np.empty(N, dtype=np.int64)
                order, run_end = sorted_search(
                    keys_a, labels, a, same, n_negatives, bucket_max, first
                )
                far = n_negatives - 1  # the easiest negative: the first of the last tied run
                while far > 0 and run_end[far - 1] == n_negatives:
                    far -= 1
            grad = np.zeros(N if want_grad else 0, dtype=G.dtype)  # dL/dD[a, :]
            total = 0.0
            k = 0
            for p in same:  # try all positives for the anchor
                if a == p:
                    continue  # positive cannot be the same as the anchor
                if n_negatives == 0:  # TFA's masked maximum over no negative: the row's minimum
                    smallest, ties = smallest_entry(distances)
                    n0, semihard, d_an = -1, False, distances[smallest]
                elif with_sorted_search and sort:
                    i = first[p]
                    semihard = i < n_negatives
                    i = i if semihard else far
                    n0 = order[i]
                    d_an = distances[n0]
                else:
                    n0, semihard = choose_negative(keys_a, labels, a, p, above, below)
                    d_an = distances[n0]
                l = margin + (distances[p] - d_an)
                total += max(l, zero)
                if mined.want:
                    pair = mined.pair_offset[a] + k
                    mined.anchor[pair] = a
                    mined.positive[pair] = p
                    mined.negative[pair] = n0
                    mined.semihard[pair] = semihard
                    mined.loss[pair] = max(l, zero)
                if want_grad and l >= zero:  # on the hinge TF's maximum still passes gradient
                    grad[p] += weight
                    # the negatives tied at the chosen distance share its -weight equally
                    if n_negatives == 0:
                        for n in range(smallest, N):
                            if distances[n] == distances[smallest]:
                                grad[n] -= weight / ties
                    elif with_sorted_search and sort:
                        ties = run_end[i] - i
                        for j in range(i, run_end[i]):
                            grad[order[j]] -= weight / ties
                    else:
                        ties = count_negatives_at(keys_a, labels, a, n0)
                        if ties == 1:  # most often: no second pass
                            grad[n0] -= weight
                        else:
                            for n in range(n0, N):
                                if labels[n] != labels[a] and keys_a[n] == keys_a[n0]:
                                    grad[n] -= weight / ties
                k += 1
            sums[a] = total
            if want_grad:
                for n in range(N):
                    distances[n] = pre_distance_gradient(grad[n], distances[n], metric, distances)

    return _serial_and_parallel(_anchor_loop)


_ANCHOR_LOOPS = {False: _anchor_loops(False), True: _anchor_loops(True)}


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


_SPARSE_BACKWARD = _serial_and_parallel(_sparse_backward)


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


def _symmetrize(W):
    """W += W.T in place, by 8 x 8 tiles (`python -m bench.products` times it). Iteration h takes
    tile rows h and n - 1 - h, so all do equal work."""
    tile = 8
    n = (W.shape[0] + tile - 1) // tile
    for h in prange((n + 1) // 2):
        _add_transposed_tile_row(W, h, tile)
        if n - 1 - h != h:
            _add_transposed_tile_row(W, n - 1 - h, tile)


_SYMMETRIZE = _serial_and_parallel(_symmetrize)


def order_keys(D):
    """Unsigned integers with the order of the floats in D, for a matrix that may hold negative
    values (IEEE 754: set the sign bit of non-negative floats, flip every bit of negative ones;
    -0.0 counts as +0.0). Distances >= +0.0 need none of this: their bits are in order already."""
    uint = np.uint32 if D.dtype == np.float32 else np.uint64
    bits = (D + D.dtype.type(0)).view(uint)  # -0.0 + 0.0 = +0.0
    sign = uint(1) << uint(8 * D.itemsize - 1)
    return np.where(bits & sign, ~bits, bits | sign)


def _distance_rows(batch, integer_keys=True):
    """(G, keys, key_range, sq, y): the matrix `_anchor_loop` turns into distances, y being x or
    its normalised rows for "angular" (G = y @ y.T), or a callable metric's matrix; its keys."""
    x = batch.x
    metric = code(batch.metric)
    sq = squared_norms(x, check=metric != ANGULAR and metric != PRECOMPUTED)
    if metric == PRECOMPUTED:
        y, G = x, check_distance_matrix(batch.metric(x), x.shape[0], x.dtype)
    else:
        y = l2_normalize(x) if metric == ANGULAR else x
        G = gram(y)
    if not integer_keys:  # the plain float loop, for the benchmark's comparison
        return G, G, (G.dtype.type(np.inf), G.dtype.type(-np.inf)), sq, y
    keys = order_keys(G) if metric == PRECOMPUTED else G.view(_KEY_DTYPES[G.dtype])
    return G, keys, (keys.dtype.type(np.iinfo(keys.dtype).max), keys.dtype.type(0)), sq, y


_KEY_DTYPES = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


def _run(batch, classes, G, keys, key_range, sq, search, gradient, mined):
    with_sorted_search = bool((classes.counts[classes.counts < batch.size] > search[0]).any())
    sums = np.zeros(batch.size)
    _pick(_ANCHOR_LOOPS[with_sorted_search], batch.size)(
        batch.codes,
        (classes.members, classes.start),
        G,
        keys,
        key_range,
        sq,
        code(batch.metric),
        batch.x.dtype.type(batch.margin),
        search,
        gradient,
        mined,
        sums,
    )
    return sums.sum()


class MinedPairs(NamedTuple):
    """Where `_anchor_loop` writes one entry per pair (a, p) when `want`: at pair_offset[a] + k for
    a's k-th positive. Without `want`, empty arrays of the same types (one compiled kernel)."""

    want: bool
    pair_offset: np.ndarray
    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    semihard: np.ndarray
    loss: np.ndarray


def _mined_pairs(batch, classes, want):
    n = classes.n_pairs if want else 0
    return MinedPairs(
        want,
        classes.pair_offset,
        *(np.empty(n, dtype=np.int64) for _ in range(3)),
        np.empty(n, dtype=np.bool_),
        np.empty(n, dtype=batch.x.dtype),
    )


def loss(
    batch,
    sorted_search_min_positives=SORTED_SEARCH_MIN_POSITIVES,
    bucket_max=BUCKET_MAX,
    integer_keys=True,
):
    classes = class_tables(batch.codes)
    if classes.n_pairs == 0:
        return 0.0  # TFA: 0 / 0 = NaN
    G, keys, key_range, sq, _ = _distance_rows(batch, integer_keys)
    search = (sorted_search_min_positives, bucket_max)
    total = _run(
        batch,
        classes,
        G,
        keys,
        key_range,
        sq,
        search,
        (False, 0.0),
        _mined_pairs(batch, classes, False),
    )
    return total / classes.n_pairs


def loss_and_grad(
    batch,
    sorted_search_min_positives=SORTED_SEARCH_MIN_POSITIVES,
    sparse_backward_max_density=SPARSE_BACKWARD_MAX_DENSITY,
):
    classes = class_tables(batch.codes)
    n_pairs = classes.n_pairs
    if n_pairs == 0:
        return 0.0, np.zeros_like(batch.x)
    G, keys, key_range, sq, y = _distance_rows(batch)
    search = (sorted_search_min_positives, BUCKET_MAX)
    gradient = (True, 1.0 / n_pairs)
    loss = _run(
        batch,
        classes,
        G,
        keys,
        key_range,
        sq,
        search,
        gradient,
        _mined_pairs(batch, classes, False),
    )
    loss /= n_pairs
    # G now holds dL/dP, with at most 2 (n_pairs / B) nonzeros per row plus ties. Small classes
    # leave it sparse: walk its nonzeros. Large classes fill it: one BLAS product is cheaper.
    B = batch.size
    angular = code(batch.metric) == ANGULAR
    if 2 * n_pairs * sparse_backward_max_density < B * B:
        h = _pick(_SPARSE_BACKWARD, B)(G, y, 0.0 if angular else 1.0)
        return loss, normalize_backward(batch.x, -h) if angular else 2 * h
    _pick(_SYMMETRIZE, B)(G)  # S = dL/dP + its transpose: one product with S instead of two
    return loss, symmetric_pre_distance_backward(batch.x, G, batch.metric)


def mine(batch, sorted_search_min_positives=SORTED_SEARCH_MIN_POSITIVES):
    classes = class_tables(batch.codes)
    G, keys, key_range, sq, _ = _distance_rows(batch)
    mined = _mined_pairs(batch, classes, True)
    search = (sorted_search_min_positives, BUCKET_MAX)
    _run(batch, classes, G, keys, key_range, sq, search, (False, 0.0), mined)
    return MiningResult(mined.anchor, mined.positive, mined.negative, mined.semihard, mined.loss)

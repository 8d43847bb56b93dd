"""Backend "cpu": the post's loops compiled with Numba, run over chunks of anchors on the
library's threads (`_threads`).

The anchors are taken in blocks, and a block in chunks. For each chunk, the chunk's rows of the
Gram matrix y @ y.T come from NumPy's BLAS (`_distances.gram_rows`), the one cost every
implementation pays; then the rule's kernel runs the post's loops over them while they are in
cache: every anchor turns its own row into distances in place (`_metrics.distance`) and runs its
positive loop over that row. For "semihard" that is the post itself, each positive's negative
coming from the post's search (`_loop.choose_negative`); "batch-all" and "all-semihard" loop over
the negatives of every positive (`_loop.pair_triplets`); "hard" needs one pass over the row
(`_loop.hardest_pair`). An anchor with at least SORTED_SEARCH_MIN_POSITIVES positives (measured
per rule, with and without the gradient: `python -m bench.crossover`) sorts its negatives once
instead (`_sorted_search`). No two threads touch the same row, and each anchor's sums go to their
own slots, added in a fixed order after the kernel, so the result does not depend on the thread
count.

Batches below SERIAL_MAX_BATCH are one chunk, on the calling thread alone, its Gram product too:
waking threads would cost more than it saves, and a BLAS product split among threads waits for the
slowest, which may share its core with another pool's spinning thread (in a PyTorch step at
B = 256 that took the loss from 1.3 to 4 ms: bench/README.md, "The loss in a loop").

A block holds as many anchors as fit in `_distances.block_bytes()` (SEMIHARD_NUMBA_BLOCK_BYTES,
1 GiB by default) beside their B columns: memory beyond the input is O(block x B), never O(B^2)
unless the budget allows it.

The kernels compute the sum over the rule's triplets, its gradient with respect to the distances
(then to the embeddings) and the counts of `TripletStats`; `Rule.scale` makes the mean. They
release the GIL (nogil), so that the library's threads run them at once.
"""

from typing import NamedTuple

import numpy as np

from . import _threads
from ._cache import jit
from ._classes import class_tables
from ._distances import block_rows, gram_rows, l2_normalize, normalize_backward, squared_norms
from ._inputs import check_distance_matrix
from ._loop import (
    BATCH_ALL_CODE,
    choose_negative,
    count_negatives_at,
    hard_candidate,
    hardest_pair,
    pair_triplets,
    smallest_entry,
)
from ._metrics import ANGULAR, PRECOMPUTED, code, distance, pre_distance_gradient
from ._mining import MiningResult
from ._rules import (
    ALL_SEMIHARD,
    BATCH_ALL,
    BATCH_ALL_EPSILON,
    HARD,
    SEMIHARD,
    Rule,
    TripletStats,
)
from ._sorted_search import BUCKET_MAX, every_triplet, semihard_negatives

# An anchor with at least this many positives sorts its negatives instead of running the post's
# loop for each positive: (loss alone, loss with gradient) per rule, about where the two cost the
# same as measured by `python -m bench.crossover` (bench/README.md, "Sorted-search crossover").
# With the gradient, "semihard" crosses over at fewer positives than without (measured, both
# batch sizes). "hard" makes one pass over the row and has no such choice.
SORTED_SEARCH_MIN_POSITIVES = {SEMIHARD: (23, 15), BATCH_ALL: (11, 11), ALL_SEMIHARD: (11, 11)}

# Smaller batches run on the calling thread (bench/README.md, "Threads").
SERIAL_MAX_BATCH = 1024

# The gradient walks the nonzeros of dL/dP while their share of a row is below 1 / this.
SPARSE_BACKWARD_MAX_DENSITY = 16


@jit
def _to_distances(row, sq, a, metric):
    """Row a of the Gram matrix, in place, to row a of TFA's distance matrix."""
    if metric != PRECOMPUTED:  # a callable metric's row is a distance row already
        for n in range(row.shape[0]):
            row[n] = distance(row[n], sq, a, n, metric)


@jit
def _to_pre_distance_gradient(row, grad, metric):
    """Row a of the distance matrix, in place, to row a of dS/dP from grad = dS/dD[a, :]."""
    zero = row.dtype.type(0)
    for n in range(row.shape[0]):  # most entries pass no gradient: no division for them
        row[n] = pre_distance_gradient(grad[n], row[n], metric, row) if grad[n] != zero else zero


def _semihard_loops(with_sorted_search):
    """The kernel of the "semihard" rule, with the sorted search of large
    classes compiled in or not: Numba drops the branches on the constant `with_sorted_search`
    before compiling, and ordinary batches never pay the sort's compile time."""

    def _semihard_loop(
        labels,
        classes,
        anchors,
        G,
        keys,
        key_range,
        sq,
        metric,
        margin,
        search,
        want_grad,
        mined,
        totals,
    ):
        """The post's loops over a chunk of anchors.

        labels: (B,) class codes; classes = (members, start) of `_classes.Classes`.
        anchors: the chunk's anchors; G: their rows of the Gram matrix (or of a callable metric's
        distances), row i for anchors[i], which ends as dS/dP[a, :] with want_grad, else as
        distances. keys: G's distances as order keys (`order_keys`), key_range = (above, below)
        every key. search = (sorted_search_min_positives, bucket_max). mined: a `MinedPairs`.
        totals[i] = (sum, pairs, active, semihard).
        """
        N = labels.shape[0]
        members, start = classes
        above, below = key_range
        sorted_search_min_positives, bucket_max = search
        zero = G.dtype.type(0)
        for i in range(anchors.shape[0]):  # give every anchor of the chunk its chance
            a = anchors[i]
            distances = G[i]
            _to_distances(distances, sq, a, metric)
            keys_a = keys[i]
            same = members[start[labels[a]] : start[labels[a] + 1]]
            n_negatives = N - same.shape[0]
            sort = n_negatives > 0 and same.shape[0] - 1 >= sorted_search_min_positives
            if with_sorted_search and sort:  # the second path: sort a's negatives once
                first = np.empty(N, dtype=np.int64)
                order, run_end = semihard_negatives(
                    distances, labels, a, same, n_negatives, bucket_max, first
                )
                far = n_negatives - 1  # the easiest negative: the first of the last tied run
                while far > 0 and run_end[far - 1] == n_negatives:
                    far -= 1
            grad = np.zeros(N if want_grad else 0, dtype=G.dtype)  # dS/dD[a, :]
            total = 0.0
            active = semihard_pairs = 0
            k = 0
            for p in same:  # try all positives for the anchor (the post scans all N and skips
                if a == p:  # other labels: with large classes that skip is a coin toss)
                    continue  # positive cannot be the same as the anchor
                if n_negatives == 0:  # TFA's masked maximum over no negative: the row's minimum
                    smallest, ties = smallest_entry(distances)
                    n0, semihard, d_an = -1, False, distances[smallest]
                elif with_sorted_search and sort:
                    j = first[p]
                    semihard = j < n_negatives
                    j = j if semihard else far
                    n0 = order[j]
                    d_an = distances[n0]
                else:
                    n0, semihard = choose_negative(keys_a, labels, a, p, above, below)
                    d_an = distances[n0]
                l = margin + (distances[p] - d_an)
                total += max(l, zero)
                active += l > zero
                semihard_pairs += semihard
                if mined.want:
                    pair = mined.pair_offset[i] + k
                    mined.anchor[pair] = a
                    mined.positive[pair] = p
                    mined.negative[pair] = n0
                    mined.semihard[pair] = semihard
                    mined.loss[pair] = max(l, zero)
                if want_grad and l >= zero:  # on the hinge TF's maximum still passes gradient
                    grad[p] += 1
                    # the negatives tied at the chosen distance share its -1 equally
                    if n_negatives == 0:
                        for n in range(smallest, N):
                            if distances[n] == distances[smallest]:
                                grad[n] -= 1 / ties
                    elif with_sorted_search and sort:
                        ties = run_end[j] - j
                        for m in range(j, run_end[j]):
                            grad[order[m]] -= 1 / ties
                    else:
                        ties = count_negatives_at(keys_a, labels, a, n0)
                        if ties == 1:  # most often: no second pass
                            grad[n0] -= 1
                        else:
                            for n in range(n0, N):
                                if labels[n] != labels[a] and keys_a[n] == keys_a[n0]:
                                    grad[n] -= 1 / ties
                k += 1
            totals[i, 0], totals[i, 1] = total, same.shape[0] - 1
            totals[i, 2], totals[i, 3] = active, semihard_pairs
            if want_grad:
                _to_pre_distance_gradient(distances, grad, metric)

    return jit(_semihard_loop, nogil=True)


def _hard_loop(labels, classes, anchors, G, sq, metric, margin, soft, want_grad, totals):
    """TFA's triplet_hard_loss for a block of anchors: one pass over each row for its farthest
    positive and nearest negative (`_loop.hardest_pair`). Arguments as `_semihard_loop`'s; soft:
    the soft-margin form. totals[i] = (the anchor's loss, 1, active, hardest positive <
    hardest negative)."""
    N = labels.shape[0]
    members, start = classes
    zero = G.dtype.type(0)
    for i in range(anchors.shape[0]):  # every anchor of the chunk
        a = anchors[i]
        distances = G[i]
        _to_distances(distances, sq, a, metric)
        size = start[labels[a] + 1] - start[labels[a]]
        p0, p_ties, n0, n_ties = hardest_pair(distances, labels, a)
        z = distances[p0] - distances[n0]
        if soft:  # log1p(exp(z)) without overflow, and its slope, the sigmoid
            l = max(np.float64(z), 0.0) + np.log1p(np.exp(-abs(np.float64(z))))
            slope = 0.5 * (1.0 + np.tanh(0.5 * np.float64(z)))
        else:
            hinge = z + margin
            l = np.float64(max(hinge, zero))
            slope = 1.0 if hinge >= zero else 0.0  # on the hinge TF's maximum still passes
        totals[i, 0], totals[i, 1], totals[i, 2], totals[i, 3] = l, 1, l > 0, z < zero
        if want_grad:
            grad = np.zeros(N, dtype=G.dtype)  # tied candidates share the gradient
            for n in range(N):
                positive, negative = hard_candidate(labels, a, n, size > 1, size < N)
                if positive and distances[n] == distances[p0]:
                    grad[n] += slope / p_ties
                if negative and distances[n] == distances[n0]:
                    grad[n] -= slope / n_ties
            _to_pre_distance_gradient(distances, grad, metric)


_HARD_LOOP = jit(_hard_loop, nogil=True)


def _every_triplet_loops(with_sorted_search):
    """The kernel of "batch-all" and "all-semihard" (see `_semihard_loops`)."""

    def _every_triplet_loop(
        labels, classes, anchors, G, sq, metric, margin, rule, search, want_grad, pairs, totals
    ):
        """Every triplet of the rule (`_rules.CODES`), for a block of anchors: for each
        positive the post's loop over the negatives (`_loop.pair_triplets`), or the sorted
        search. Arguments as `_semihard_loop`'s; classes = (members, start, position);
        pairs = (want, pair_offset, values): values[pair_offset[i] + k], the sum of the losses of
        anchors[i]'s k-th positive, where want. totals[i] = (sum, counted, active, farther)."""
        N = labels.shape[0]
        members, start, position = classes
        want_pairs, pair_offset, pair_values = pairs
        sorted_search_min_positives, bucket_max = search
        epsilon = G.dtype.type(BATCH_ALL_EPSILON if rule == BATCH_ALL_CODE else 0)
        for i in range(anchors.shape[0]):  # give every anchor of the chunk its chance
            a = anchors[i]
            distances = G[i]
            _to_distances(distances, sq, a, metric)
            same = members[start[labels[a]] : start[labels[a] + 1]]
            n_negatives = N - same.shape[0]
            grad = np.zeros(N if want_grad else 0, dtype=G.dtype)  # dS/dD[a, :]
            values = pair_values[pair_offset[i] : pair_offset[i + 1]] if want_pairs else pair_values
            total = 0.0
            counted = active = farther = 0
            sort = n_negatives > 0 and same.shape[0] - 1 >= sorted_search_min_positives
            if with_sorted_search and sort:
                total, counted, active, farther = every_triplet(
                    distances,
                    labels,
                    a,
                    same,
                    position,
                    n_negatives,
                    margin,
                    rule,
                    epsilon,
                    bucket_max,
                    grad,
                    values,
                )
            else:
                k = 0
                for p in same:  # try all positives for the anchor
                    if a == p:
                        continue  # positive cannot be the same as the anchor
                    t, c, act, far, passing = pair_triplets(
                        distances, labels, a, p, margin, rule, epsilon, grad
                    )
                    total, counted = total + t, counted + c
                    active, farther = active + act, farther + far
                    if want_pairs:
                        values[k] = t
                    if want_grad:
                        grad[p] += passing
                    k += 1
            totals[i, 0], totals[i, 1], totals[i, 2], totals[i, 3] = total, counted, active, farther
            if want_grad:
                _to_pre_distance_gradient(distances, grad, metric)

    return jit(_every_triplet_loop, nogil=True)


_SEMIHARD_LOOPS = {False: _semihard_loops(False), True: _semihard_loops(True)}
_EVERY_TRIPLET_LOOPS = {False: _every_triplet_loops(False), True: _every_triplet_loops(True)}


@jit(nogil=True)
def _sparse_backward_rows(W, y, anchors, self_weight, h):
    """h_a += sum_j W_ij (s y_a - y_j) for a = anchors[i], s = self_weight, paying O(D) only for
    nonzero W_ij: the gradient's share of the rows W of dS/dP, for the anchors' own rows of h.
    Returns the nonzeros (a, j, W_ij), row by row, for `_sparse_backward_columns`."""
    D = y.shape[1]
    count = 0
    for i in range(W.shape[0]):
        for j in range(W.shape[1]):
            count += W[i, j] != 0
    anchor = np.empty(count, dtype=np.int64)
    column = np.empty(count, dtype=np.int64)
    weight = np.empty(count, dtype=W.dtype)
    k = 0
    for i in range(anchors.shape[0]):
        a = anchors[i]
        for j in range(W.shape[1]):
            w = W[i, j]
            if w != 0:
                anchor[k], column[k], weight[k] = a, j, w
                k += 1
                for d in range(D):
                    h[a, d] += w * (self_weight * y[a, d] - y[j, d])
    return anchor, column, weight


@jit(nogil=True)
def _sparse_backward_columns(anchor, column, weight, y, self_weight, h, first, stop):
    """h_j += sum_a W_aj (s y_j - y_a) for the columns first <= j < stop, from the nonzeros of
    every row, in row order: each h_j is summed in the same order however the columns are shared
    among threads. Runs after `_sparse_backward_rows` has done every row."""
    D = y.shape[1]
    for k in range(column.shape[0]):
        j = column[k]
        if first <= j < stop:
            a, w = anchor[k], weight[k]
            for d in range(D):
                h[j, d] += w * (self_weight * y[j, d] - y[a, d])


def order_keys(D):
    """Unsigned integers with the order of the floats in D, for a matrix that may hold negative
    values (IEEE 754: set the sign bit of non-negative floats, flip every bit of negative ones;
    -0.0 counts as +0.0). Distances >= +0.0 need none of this: their bits are in order already."""
    uint = np.uint32 if D.dtype == np.float32 else np.uint64
    bits = (D + D.dtype.type(0)).view(uint)  # -0.0 + 0.0 = +0.0
    sign = uint(1) << uint(8 * D.itemsize - 1)
    return np.where(bits & sign, ~bits, bits | sign)


_KEY_DTYPES = {np.dtype(np.float32): np.uint32, np.dtype(np.float64): np.uint64}


class _Embeddings:
    """What every block needs of the embeddings: the squared norms sq, the rows y the Gram matrix
    is made of (x, or its normalised rows for "angular"), or a callable metric's matrix."""

    def __init__(self, batch):
        x = batch.x
        self.metric = code(batch.metric)
        self.sq = squared_norms(x, check=self.metric not in (ANGULAR, PRECOMPUTED))
        self.y = l2_normalize(x) if self.metric == ANGULAR else x
        self.matrix = None
        if self.metric == PRECOMPUTED:
            self.matrix = check_distance_matrix(batch.metric(x), x.shape[0], x.dtype)

    def rows(self, block, integer_keys, out=None):
        """(G, keys, key_range): the block's rows of the Gram matrix (a private copy of the
        callable's), into `out` when given, and their distances as order keys once
        `_to_distances` has run."""
        if self.matrix is not None:
            G = np.take(self.matrix, block, axis=0, out=out)
        else:
            G = gram_rows(self.y, block, out)
        if not integer_keys:  # the plain float loop, for the benchmark's comparison
            return G, G, (G.dtype.type(np.inf), G.dtype.type(-np.inf))
        keys = order_keys(G) if self.matrix is not None else G.view(_KEY_DTYPES[G.dtype])
        return G, keys, (keys.dtype.type(np.iinfo(keys.dtype).max), keys.dtype.type(0))


class MinedPairs(NamedTuple):
    """Where `_semihard_loop` writes one entry per pair (a, p) when `want`: at pair_offset[i] + k
    for the k-th positive of anchors[i]. Without `want`, empty arrays of the same types."""

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


def _search(rule, classes, B, want_grad, options):
    """(search, with_sorted_search) for the kernels: search = (the sorted search's threshold,
    bucket_max), and whether any class is large enough for it, so that the kernel is compiled
    with it."""
    threshold = options["sorted_search_min_positives"]
    if threshold is None:  # the rule's own ("hard" never reads it)
        threshold = SORTED_SEARCH_MIN_POSITIVES.get(rule.name, (0, 0))[want_grad]
    with_sorted_search = bool((classes.counts[classes.counts < B] > threshold).any())
    return (threshold, options["bucket_max"]), with_sorted_search


def _run_kernel(
    batch, rule, classes, embeddings, block, G, keys, key_range, search, with_sorted_search, out
):
    """Run the rule's kernel on one chunk of anchors (`out` holds the chunk's slices; search and
    with_sorted_search from `_search`)."""
    metric, margin = embeddings.metric, batch.x.dtype.type(batch.margin)
    members = (classes.members, classes.start)
    if rule.name == SEMIHARD:
        _SEMIHARD_LOOPS[with_sorted_search](
            batch.codes,
            members,
            block,
            G,
            keys,
            key_range,
            embeddings.sq,
            metric,
            margin,
            search,
            out.want_grad,
            out.mined,
            out.totals,
        )
    elif rule.name == HARD:
        _HARD_LOOP(
            batch.codes,
            members,
            block,
            G,
            embeddings.sq,
            metric,
            margin,
            rule.soft,
            out.want_grad,
            out.totals,
        )
    else:
        _EVERY_TRIPLET_LOOPS[with_sorted_search](
            batch.codes,
            (*members, classes.position),
            block,
            G,
            embeddings.sq,
            metric,
            margin,
            rule.code,
            search,
            out.want_grad,
            out.pairs,
            out.totals,
        )


class _ChunkOutputs(NamedTuple):
    want_grad: bool
    totals: np.ndarray
    mined: MinedPairs
    pairs: tuple


def _slice(mined, start, stop):
    """`MinedPairs` for anchors start .. stop - 1: their offsets (the arrays stay whole)."""
    return mined._replace(pair_offset=mined.pair_offset[start : stop + 1])


SPEED_UPS = dict(
    sorted_search_min_positives=None,  # None: the rule's SORTED_SEARCH_MIN_POSITIVES; a number: all
    bucket_max=BUCKET_MAX,
    integer_keys=True,
    sparse_backward_max_density=SPARSE_BACKWARD_MAX_DENSITY,
    rows_per_block=None,
    rows_per_chunk=None,
)


def _run_blocks(batch, rule, want_grad, want_values, options):
    """Run the rule's kernel over the anchors, block by block, with the gradient's share of each
    block accumulated before the next block's Gram rows are made. want_values: per-pair results
    (`MinedPairs` for "semihard", the pairs' sums for the every-triplet rules). Returns (classes,
    embeddings, totals, mined, values, h), h the gradient before its last factor (see
    `_dense_backward_rows`; None without grad)."""
    classes = class_tables(batch.codes, batch.anchors)
    anchors, B = batch.anchors, batch.size
    embeddings = _Embeddings(batch)
    integer_keys = options["integer_keys"] and rule.name == SEMIHARD
    rows = options["rows_per_block"] or block_rows(B, batch.x.dtype.itemsize)
    totals = np.zeros((anchors.shape[0], 4))
    mined = _mined_pairs(batch, classes, want_values and rule.name == SEMIHARD)
    want_pairs = want_values and rule.name not in (SEMIHARD, HARD)
    values = np.zeros(classes.n_pairs if want_pairs else 0, dtype=batch.x.dtype)
    h = np.zeros_like(embeddings.y) if want_grad else None
    sparse = want_grad and _sparse_backward(rule, classes, B, options)
    self_weight = _self_weight(embeddings)
    n_threads = 1 if B < SERIAL_MAX_BATCH else _threads.threads()
    chunk = options["rows_per_chunk"] or _chunk_rows(B, batch.x.dtype.itemsize)
    search = _search(rule, classes, B, want_grad, options)  # once: the same for every chunk
    for start in range(0, anchors.shape[0], rows):
        stop = min(start + rows, anchors.shape[0])
        block = anchors[start:stop]
        n_chunks = -(-block.shape[0] // chunk)
        # the block's rows of dS/dP for the dense backward; else each chunk's rows in scratch
        W = np.empty((block.shape[0], B), batch.x.dtype) if want_grad and not sparse else None
        nonzeros = [None] * n_chunks  # the sparse backward's (a, j, W_aj), chunk by chunk

        def run_chunk(c, start=start, block=block, W=W, nonzeros=nonzeros):
            lo, hi = c * chunk, min((c + 1) * chunk, block.shape[0])
            rows_c = block[lo:hi]
            if n_chunks == 1 and W is None:  # the whole product, as `gram` makes it
                into = None
            else:
                into = W[lo:hi] if W is not None else _threads.scratch((hi - lo, B), batch.x.dtype)
            G, keys, key_range = embeddings.rows(rows_c, integer_keys, into)
            pairs = (want_pairs, classes.pair_offset[start + lo : start + hi + 1], values)
            totals_c, mined_c = (
                totals[start + lo : start + hi],
                _slice(mined, start + lo, start + hi),
            )
            out = _ChunkOutputs(want_grad, totals_c, mined_c, pairs)
            _run_kernel(batch, rule, classes, embeddings, rows_c, G, keys, key_range, *search, out)
            if sparse:  # G holds the chunk's rows of dS/dP
                nonzeros[c] = _sparse_backward_rows(G, embeddings.y, rows_c, self_weight, h)
            elif want_grad:
                _dense_backward_rows(h, G, embeddings.y, rows_c, self_weight)

        with _threads.one_thread_blas():  # the Gram rows and the kernel, chunk by chunk
            _threads.run_chunks(run_chunk, n_chunks, n_threads)
            if sparse:
                _sparse_columns(h, embeddings.y, nonzeros, self_weight, n_threads)
            elif want_grad:
                _dense_columns(h, W, embeddings.y, block, self_weight, n_threads)
        del W  # before the next block's: one block in memory at a time
    return classes, embeddings, totals, mined, values, h


# A chunk's Gram rows take at most CHUNK_BYTES, to stay in cache while the kernel runs over them,
# and a block has at least MIN_CHUNKS chunks, so that a thread slowed by another one on its core
# hands its share to the others; but a chunk has at least MIN_CHUNK_ROWS rows, as each of its
# products packs the whole of y (B x D) for them: at B = 65536, chunks of 4 rows took the loss
# from 10.4 s to 27.9 s (bench/README.md, "Core targets").
CHUNK_BYTES = 2**20
MIN_CHUNKS = 8
MIN_CHUNK_ROWS = 64


def _chunk_rows(B, itemsize):
    """How many anchors a chunk holds: all below SERIAL_MAX_BATCH, else a number that does not
    depend on the thread count, so neither do the Gram rows' bits."""
    if B < SERIAL_MAX_BATCH:
        return B
    return max(MIN_CHUNK_ROWS, min(CHUNK_BYTES // (B * itemsize), -(-B // MIN_CHUNKS)))


def evaluate(batch, rule, want_grad, reduction="mean", **speed_ups):
    """(loss, TripletStats, gradient or None) of `rule` (a `_rules.Rule`) on the batch's anchors;
    with reduction "none", the loss per pair (per anchor for "hard") instead. `speed_ups`
    (`SPEED_UPS`) switch the kernel's speed-ups and set the block, for the tests and the
    benchmark."""
    options = {**SPEED_UPS, **speed_ups}
    want_values = reduction == "none" and rule.name != HARD
    classes, embeddings, totals, mined, values, h = _run_blocks(
        batch, rule, want_grad, want_values, options
    )
    total, denominator, active, semihard = totals.sum(axis=0)
    stats = TripletStats(classes.n_pairs, int(denominator), int(active), int(semihard))
    if reduction == "none":  # per pair, or per anchor for "hard"
        per_item = {SEMIHARD: mined.loss, HARD: totals[:, 0].astype(batch.x.dtype)}
        return per_item.get(rule.name, values), stats, None
    scale = rule.scale(stats.denominator, reduction)
    if not want_grad:
        return total * scale, stats, None
    if embeddings.metric == ANGULAR:  # h is -dS/dn: through the normalisation
        grad = normalize_backward(batch.x, -h)
    else:  # d2_ij = |x_i|^2 + |x_j|^2 - 2 x_i.x_j: dd2_ij/dx_i = 2 (x_i - x_j)
        grad = 2 * h
    return total * scale, stats, grad * grad.dtype.type(scale)


def _self_weight(embeddings):
    return 0.0 if embeddings.metric == ANGULAR else 1.0


def _sparse_backward(rule, classes, B, options):
    """Whether the gradient walks the nonzeros of dS/dP (W): with the one negative per pair of
    "semihard" and "hard", W has a few per row. The other rules fill it."""
    nonzeros = {SEMIHARD: 2 * classes.n_pairs, HARD: 2 * B}.get(rule.name, B * B)
    return nonzeros * options["sparse_backward_max_density"] < B * B


def _column_ranges(B):
    """The columns' share of the backward is cut into MIN_CHUNKS ranges, whatever the thread
    count: (width, count)."""
    width = -(-B // MIN_CHUNKS)
    return width, -(-B // width)


def _sparse_columns(h, y, nonzeros, self_weight, n_threads):
    """The columns' share of the sparse backward (`_sparse_backward_columns`), the columns
    shared among the threads."""
    anchor, column, weight = (np.concatenate(part) for part in zip(*nonzeros))
    B = h.shape[0]
    width, count = _column_ranges(B)

    def columns(c):
        first = c * width
        _sparse_backward_columns(
            anchor, column, weight, y, self_weight, h, first, min(B, first + width)
        )

    _threads.run_chunks(columns, count, n_threads)


# dS/dx from the rows W of dS/dP, where W is dense: h_a += sum_j W_aj (s y_a - y_j) over the
# anchors a, and h_j += sum_a W_aj (s y_j - y_a) over all j; then dS/dx is 2 h for the squared
# distances P (s = 1), and -h through the normalisation for the cosine of "angular" (s = 0).
# (Adding W.T to a square W in place to make one product of it was slower here:
# bench/README.md.) With the one negative per pair of "semihard" and "hard", W has a few nonzeros
# per row, and `_sparse_backward_rows` and `_sparse_columns` walk them instead.


def _dense_backward_rows(h, W, y, rows, self_weight):
    """The anchors' rows of h, from their rows W of dS/dP: one BLAS product."""
    h[rows] += self_weight * W.sum(axis=1)[:, None] * y[rows] - W @ y


def _dense_columns(h, W, y, block, self_weight, n_threads):
    """Every row of h, from the block's rows W of dS/dP: a BLAS product for each range of
    columns, the ranges shared among the threads."""
    width, count = _column_ranges(h.shape[0])
    y_block = y[block]

    def columns(c):
        J = slice(c * width, (c + 1) * width)
        h[J] += self_weight * W[:, J].sum(axis=0)[:, None] * y[J] - W[:, J].T @ y_block

    _threads.run_chunks(columns, count, n_threads)


def mine(batch, **speed_ups):
    options = {**SPEED_UPS, **speed_ups}
    _, _, _, mined, _, _ = _run_blocks(batch, Rule(SEMIHARD), False, True, options)
    return MiningResult(mined.anchor, mined.positive, mined.negative, mined.semihard, mined.loss)

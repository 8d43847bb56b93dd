"""The second path, for anchors with many positives: sort the anchor's negatives once, then find each
positive's first strictly farther negative.

The post's loop scans the whole row for each positive: O(P B) for an anchor with P positives, which
is hopeless with large classes (two classes of 2048: 2047 scans of 4096 per anchor). Sorted once,
the negative of positive p is the first one beyond D[a, p], the easiest negative is the last, and
the negatives tied with either follow it. `_cpu.SORTED_SEARCH_MIN_POSITIVES` chooses the path.

The sort is a bucket sort on the order keys (`_loop.py`): BUCKETS_PER_NEGATIVE buckets per
negative, spread evenly over their range, filled in index order, then an insertion sort that never
crosses a bucket boundary; a lookup scans the positive's own bucket. Where one bucket would hold
more than `bucket_max` negatives (clumped distances), a stable np.argsort and a binary search take
over. Either way ties keep their index order, so the first of tied negatives is the lowest index,
as in the post's loop. `python -m bench.core_targets` times the bucket sort against np.argsort.

Each step is a function of its own: compiled as one, the loops ran at half the speed.
"""

import numpy as np
from numba import njit

from ._cache import CACHE

BUCKETS_PER_NEGATIVE = 2
BUCKET_MAX = 16


@njit(cache=CACHE)
def sorted_search(keys, labels, a, positives, n_negatives, bucket_max, first):
    """Sort a's negatives by increasing distance, ties in index order, then set first[p], for
    each of a's positives p, to the sorted position of the first negative strictly farther than p
    (n_negatives if there is none).

    keys[n] stands for D[a, n] (`_loop.py`); positives: a's class, a included (skipped).
    Returns (order, run_end): order[i] is the negative at sorted position i, and the negatives tied
    with it fill positions i ... run_end[i] - 1 when i starts their run.
    """
    negatives = np.empty(n_negatives, dtype=np.int64)
    j = 0
    for n in range(keys.shape[0]):
        if labels[n] != labels[a]:
            negatives[j] = n
            j += 1
    buckets = _buckets(keys[negatives], bucket_max)
    if buckets[0].shape[0] == 0:  # clumped
        order, sorted_keys = _argsort(negatives, keys[negatives])
    else:
        order, sorted_keys = _bucket_sort(negatives, keys[negatives], buckets)
    _first_farther(sorted_keys, keys, a, positives, buckets, first)
    return order, _run_ends(sorted_keys)


@njit(cache=CACHE)
def _bucket(key, lo, scale, n_buckets):
    """The bucket of a key: never decreases as the key grows (float64 arithmetic, clamped before
    the conversion to an integer), so equal keys share a bucket."""
    return np.int64(min(max((np.float64(key) - lo) * scale, 0.0), n_buckets - 1.0))


@njit(cache=CACHE)
def _buckets(unsorted, bucket_max):
    """(start, lo, scale): bucket b will hold sorted positions start[b] ... start[b + 1] - 1, and
    key k goes to bucket `_bucket(k, lo, scale, len(start) - 1)`. start is empty where a bucket
    would hold more than bucket_max keys."""
    lo = np.float64(unsorted.min())
    span = np.float64(unsorted.max()) - lo
    n_buckets = BUCKETS_PER_NEGATIVE * unsorted.shape[0]
    scale = n_buckets / span if span > 0 else 0.0
    start = np.zeros(n_buckets + 1, dtype=np.int64)
    for key in unsorted:
        start[_bucket(key, lo, scale, n_buckets) + 1] += 1
    for b in range(n_buckets):
        if start[b + 1] > bucket_max:
            return start[:0], lo, scale
        start[b + 1] += start[b]
    return start, lo, scale


@njit(cache=CACHE)
def _bucket_sort(negatives, unsorted, buckets):
    """(order, sorted keys): deal into buckets in index order, then insertion-sort within them."""
    start, lo, scale = buckets
    n_buckets = start.shape[0] - 1
    order = np.empty_like(negatives)
    sorted_keys = np.empty_like(unsorted)
    fill = start[:-1].copy()
    for j in range(negatives.shape[0]):
        b = _bucket(unsorted[j], lo, scale, n_buckets)
        order[fill[b]] = negatives[j]
        sorted_keys[fill[b]] = unsorted[j]
        fill[b] += 1
    largest = sorted_keys[0]  # of those sorted so far; a bucket's keys are below the next one's
    for i in range(1, sorted_keys.shape[0]):
        key = sorted_keys[i]
        if key >= largest:  # most often: in place already
            largest = key
            continue
        index, k = order[i], i
        while k > 0 and sorted_keys[k - 1] > key:  # strict: ties keep their index order
            sorted_keys[k], order[k] = sorted_keys[k - 1], order[k - 1]
            k -= 1
        sorted_keys[k], order[k] = key, index
    return order, sorted_keys


@njit(cache=CACHE)
def _argsort(negatives, unsorted):
    """(order, sorted keys) by a stable comparison sort: for clumped keys."""
    by_key = np.argsort(unsorted, kind="mergesort")
    return negatives[by_key], unsorted[by_key]


@njit(cache=CACHE)
def _first_farther(sorted_keys, keys, a, positives, buckets, first):
    """first[p] = the position of the first sorted key strictly above keys[p], for p != a."""
    start, lo, scale = buckets
    for p in positives:
        if p == a:
            continue
        key = keys[p]
        if start.shape[0] == 0:
            first[p] = np.searchsorted(sorted_keys, key, side="right")
            continue
        b = _bucket(key, lo, scale, start.shape[0] - 1)
        i = start[b]  # earlier buckets hold only smaller keys, later ones only larger keys
        while i < start[b + 1] and sorted_keys[i] <= key:
            i += 1
        first[p] = i


@njit(cache=CACHE)
def _run_ends(sorted_keys):
    """run_end[i]: the end (exclusive) of the run of equal keys that holds position i."""
    n = sorted_keys.shape[0]
    run_end = np.empty(n, dtype=np.int64)
    run_end[n - 1] = n
    for i in range(n - 2, -1, -1):
        run_end[i] = run_end[i + 1] if sorted_keys[i] == sorted_keys[i + 1] else i + 1
    return run_end

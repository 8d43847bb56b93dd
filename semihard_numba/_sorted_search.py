"""The second path, for anchors with many positives: sort the anchor's negatives once, then find each
positive's negatives among them.

The post's loop scans the whole row for each positive: O(P B) for an anchor with P positives, which
is hopeless with large classes (two classes of 2048: 2047 scans of 4096 per anchor). Sorted once:
- "semihard": the negative of positive p is the first one beyond D[a, p], the easiest negative is
  the last, and the negatives tied with either follow it;
- "batch-all" and "all-semihard": p's triplets with a loss are a run of consecutive sorted
  negatives (the loss falls as D[a, n] grows), found at its two ends, summed with prefix sums and
  counted by position. `_cpu.SORTED_SEARCH_MIN_POSITIVES` chooses the path.

The sort is a bucket sort of the distances: BUCKETS_PER_NEGATIVE buckets per negative, spread
evenly over their range, filled in index order, then an insertion sort that never crosses a bucket
boundary; a lookup scans one bucket. Where one bucket would hold more than `bucket_max` negatives
(clumped distances), a stable np.argsort and binary searches take over. Either way ties keep their
index order, so the first of tied negatives is the lowest index, as in the post's loop. The ends of
a run are found where the rule's own float comparison changes, so the result is that of the loop.
`python -m bench.core_targets` times the bucket sort against np.argsort.

Each step is a function of its own: compiled as one, the loops ran at half the speed.
"""

import numpy as np

from ._cache import jit
from ._loop import BATCH_ALL_CODE, triplet_counts

BUCKETS_PER_NEGATIVE = 2
BUCKET_MAX = 16


@jit
def sort_negatives(distances, labels, a, n_negatives, bucket_max):
    """a's negatives by increasing distance, ties in index order: (order, values, buckets), with
    values[i] = distances[order[i]] and buckets = (start, lo, scale) for `first_above` (start is
    empty where np.argsort was used)."""
    negatives = np.empty(n_negatives + 1, dtype=np.int64)
    j = 0
    for n in range(distances.shape[0]):  # without a branch: with large classes, a coin toss
        negatives[j] = n
        j += labels[n] != labels[a]
    return sort_by_distance(negatives[:n_negatives], distances, bucket_max)


@jit
def sort_by_distance(indices, distances, bucket_max):
    """(order, values, buckets): `indices` by increasing distances[indices], ties in index order."""
    unsorted = distances[indices]
    buckets = _buckets(unsorted, bucket_max)
    if buckets[0].shape[0] == 0:  # clumped
        order, values = _argsort(indices, unsorted)
    else:
        order, values = _bucket_sort(indices, unsorted, buckets)
    return order, values, buckets


@jit
def _bucket(value, lo, scale, n_buckets):
    """The bucket of a value: never decreases as the value grows (float64 arithmetic, clamped
    before the conversion to an integer), so equal values share a bucket."""
    return np.int64(min(max((np.float64(value) - lo) * scale, 0.0), n_buckets - 1.0))


@jit
def _buckets(unsorted, bucket_max):
    """(start, lo, scale): bucket b will hold sorted positions start[b] ... start[b + 1] - 1, and
    value v goes to bucket `_bucket(v, lo, scale, len(start) - 1)`. start is empty where a bucket
    would hold more than bucket_max values."""
    lo = np.float64(unsorted.min())
    span = np.float64(unsorted.max()) - lo
    n_buckets = BUCKETS_PER_NEGATIVE * unsorted.shape[0]
    scale = n_buckets / span if span > 0 else 0.0
    if not np.isfinite(scale):  # a span below ~1e-305: one bucket, and np.argsort takes over
        scale = 0.0
    start = np.zeros(n_buckets + 1, dtype=np.int64)
    for value in unsorted:
        start[_bucket(value, lo, scale, n_buckets) + 1] += 1
    for b in range(n_buckets):
        if start[b + 1] > bucket_max:
            return start[:0], lo, scale
        start[b + 1] += start[b]
    return start, lo, scale


@jit
def _bucket_sort(negatives, unsorted, buckets):
    """(order, values): deal into buckets in index order, then insertion-sort within them."""
    start, lo, scale = buckets
    n_buckets = start.shape[0] - 1
    order = np.empty_like(negatives)
    values = np.empty_like(unsorted)
    fill = start[:-1].copy()
    for j in range(negatives.shape[0]):
        b = _bucket(unsorted[j], lo, scale, n_buckets)
        order[fill[b]] = negatives[j]
        values[fill[b]] = unsorted[j]
        fill[b] += 1
    largest = values[0]  # of those sorted so far; a bucket's values are below the next one's
    for i in range(1, values.shape[0]):
        value = values[i]
        if value >= largest:  # most often: in place already
            largest = value
            continue
        index, k = order[i], i
        while k > 0 and values[k - 1] > value:  # strict: ties keep their index order
            values[k], order[k] = values[k - 1], order[k - 1]
            k -= 1
        values[k], order[k] = value, index
    return order, values


@jit
def _argsort(negatives, unsorted):
    """(order, values) by a stable comparison sort: for clumped distances."""
    by_value = np.argsort(unsorted, kind="mergesort")
    return negatives[by_value], unsorted[by_value]


@jit(inline="always")
def first_above(values, start, lo, scale, x):
    """The position of the first sorted value strictly above x (len(values) if none), with the
    buckets (start, lo, scale) of `sort_negatives`."""
    if start.shape[0] == 0:
        return np.searchsorted(values, x, side="right")
    b = _bucket(x, lo, scale, start.shape[0] - 1)
    i = start[b]  # earlier buckets hold only smaller values, later ones only larger values
    while i < start[b + 1] and values[i] <= x:
        i += 1
    return i


@jit
def run_ends(values):
    """run_end[i]: the end (exclusive) of the run of equal values that holds position i."""
    n = values.shape[0]
    run_end = np.empty(n, dtype=np.int64)
    run_end[n - 1] = n
    for i in range(n - 2, -1, -1):
        run_end[i] = run_end[i + 1] if values[i] == values[i + 1] else i + 1
    return run_end


@jit
def semihard_negatives(distances, labels, a, positives, n_negatives, bucket_max, first):
    """The second path of the "semihard" rule: first[p] = the sorted position of the first
    negative strictly farther than p, for a's positives p (n_negatives if there is none).
    Returns (order, run_end) (`sort_negatives`, `run_ends`). positives: a's class, a included."""
    order, values, (start, lo, scale) = sort_negatives(
        distances, labels, a, n_negatives, bucket_max
    )
    for p in positives:
        if p != a:
            first[p] = first_above(values, start, lo, scale, distances[p])
    return order, run_ends(values)


@jit(inline="always")
def _run_end(values, d_ap, margin, rule, epsilon, field, start, end):
    """Move `start` right, up to `end`, while the sorted negative there satisfies field `field`
    of `triplet_counts` (1: kept, 2: l > epsilon, 3: passes) with the positive at d_ap."""
    while start < end and triplet_counts(d_ap, values[start], margin, rule, epsilon)[field]:
        start += 1
    return start


@jit
def every_triplet(
    distances,
    labels,
    a,
    positives,
    position,
    n_negatives,
    margin,
    rule,
    epsilon,
    bucket_max,
    grad,
    pair_values,
):
    """The second path of "batch-all" and "all-semihard" for anchor a: (total, counted, active,
    farther) as `_loop.pair_triplets` gives them, summed over a's positives. With grad (its length
    is the batch's), adds the gradient of the sum: +1 at p and -1 at n per triplet that passes.
    With pair_values (one per positive but a), pair_values[k] is the sum of the losses of a's
    k-th positive (position: `_classes.Classes.position`).

    Both a's negatives and its positives are sorted: as D[a, p] grows, each end of p's run of
    triplets only moves right, so one sweep finds them all."""
    if positives.shape[0] < 2:  # a alone in its class
        return 0.0, 0, 0, 0
    order, values, _ = sort_negatives(distances, labels, a, n_negatives, bucket_max)
    others = np.empty(positives.shape[0] - 1, dtype=np.int64)
    j = 0
    for p in positives:
        if p != a:
            others[j] = p
            j += 1
    positive_order, positive_values, _ = sort_by_distance(others, distances, bucket_max)
    zero = epsilon - epsilon
    prefix = np.zeros(n_negatives + 1)  # prefix[i]: the sum of the i nearest negatives
    for i in range(n_negatives):
        prefix[i + 1] = prefix[i] + values[i]
    passing = np.zeros(n_negatives + 1, dtype=np.int64)  # the -1s, as differences by position
    total = 0.0
    counted = active = farther = 0
    above = first = end = positive_end = counted_end = passing_end = 0
    for j in range(positive_order.shape[0]):
        p, d_ap = positive_order[j], positive_values[j]
        while above < n_negatives and values[above] <= d_ap:
            above += 1
        farther += n_negatives - above
        # the triplets the rule keeps: every one, or those with 0 < d_an - d_ap <= margin
        if rule == BATCH_ALL_CODE:
            end = n_negatives
        else:
            first = above
            end = _run_end(values, d_ap, margin, rule, epsilon, 1, max(end, first), n_negatives)
        positive_end = _run_end(values, d_ap, margin, rule, zero, 2, max(positive_end, first), end)
        counted_end = _run_end(values, d_ap, margin, rule, epsilon, 2, max(counted_end, first), end)
        active += positive_end - first
        counted += counted_end - first
        pair_total = (positive_end - first) * (np.float64(d_ap) + np.float64(margin)) - (
            prefix[positive_end] - prefix[first]
        )
        total += pair_total
        if pair_values.shape[0] > 0:
            pair_values[position[p] - (position[p] > position[a])] = pair_total
        if grad.shape[0] > 0:
            passing_end = _run_end(
                values, d_ap, margin, rule, epsilon, 3, max(passing_end, first), end
            )
            grad[p] += passing_end - first
            passing[first] += 1
            passing[passing_end] -= 1
    if grad.shape[0] > 0:
        count = 0
        for i in range(n_negatives):
            count += passing[i]
            grad[order[i]] -= count
    return total, counted, active, farther

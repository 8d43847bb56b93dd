"""The post's loop, compiled: the search that gives each (anchor, positive) pair its negative.

`choose_negative` is the inner loop of `semiHardTripletLoss` from the post (README.md, "Where it
comes from"), kept almost word for word. The "cpu" backend calls it for every positive of an anchor
with few positives, and each thread of the "cuda" mining kernel calls it for the pairs it handles:
numba.cuda compiles a plain Numba function for the device when a kernel calls it. So it takes no
signature, allocates nothing and calls nothing.

Where it departs from the post, TFA wins or speed does:
- `distances` is the anchor's row of the distance matrix, read as unsigned integers. Distances are
  never negative, and for floats >= +0.0 the bit patterns have the same order as the values, so the
  comparisons are the post's; integer minima compile to vector code, float ones do not (the ratio
  is measured by `python -m bench.core_targets`). A callable metric's matrix, which may hold
  negative values, is first mapped to integers of the same order (`_cpu.order_keys`).
- Semi-hard means strictly farther than the positive: TFA does not use the margin to choose.
- The post updates the easiest negative (Max) and the index n0 inside its loop. Here Max is looked
  for only when no semi-hard negative exists, and n0 after the loop, as the first negative at the
  chosen distance: the same n, but an index tracked inside the loop keeps it from vectorizing.
"""

from numba import njit

from ._cache import CACHE


@njit(cache=CACHE)
def choose_negative(distances, labels, a, p, Min, Max):
    """TFA's negative for the pair (a, p): (n0, whether it is semi-hard).

    distances[n] stands for D[a, n] (see above) and labels are class codes. Min and Max come in
    above and below every distance, as the post's 1.e10 and 1.e-10. n0 is -1 when a has no negative
    at all (TFA then uses the smallest entry of a's row: the caller's business).
    """
    nothing = Min
    for n in range(distances.shape[0]):  # find suiting negative
        if labels[a] == labels[n]:
            continue
        if distances[p] >= distances[n]:
            continue  # make sure negative is semi hard (strictly farther; TFA ignores the margin)
        if distances[n] < Min:
            Min = distances[n]  # find hardest semi hard negative
    semihard = Min != nothing
    if not semihard:  # no semi hard negative found
        for n in range(distances.shape[0]):
            if labels[a] == labels[n]:
                continue
            if distances[n] > Max:
                Max = distances[n]  # this will give easiest negative if no semi hard negative found
        Min = Max
    for n0 in range(distances.shape[0]):  # the first negative at that distance
        if labels[a] != labels[n0] and distances[n0] == Min:
            return n0, semihard
    return -1, semihard


@njit(cache=CACHE)
def count_negatives_at(distances, labels, a, n0):
    """How many negatives of a lie at exactly the distance of n0, the first of them: TFA's gradient
    shares the pair's -1 among them."""
    count = 0
    for n in range(n0, distances.shape[0]):
        count += (labels[a] != labels[n]) & (distances[n] == distances[n0])
    return count


@njit(cache=CACHE)
def smallest_entry(distances):
    """(n0, ties) for an anchor without any negative: TFA's masked maximum over an empty mask is
    the smallest entry of the row, n0 the first one at it and ties how many share it."""
    n0 = 0
    for n in range(1, distances.shape[0]):
        if distances[n] < distances[n0]:
            n0 = n
    ties = 0
    for n in range(n0, distances.shape[0]):
        ties += distances[n] == distances[n0]
    return n0, ties

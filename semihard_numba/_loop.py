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

from ._cache import jit
from ._rules import BATCH_ALL, CODES

BATCH_ALL_CODE = CODES[BATCH_ALL]


@jit
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


@jit
def count_negatives_at(distances, labels, a, n0):
    """How many negatives of a lie at exactly the distance of n0, the first of them: TFA's gradient
    shares the pair's -1 among them."""
    count = 0
    for n in range(n0, distances.shape[0]):
        count += (labels[a] != labels[n]) & (distances[n] == distances[n0])
    return count


@jit
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


@jit
def hardest_pair(distances, labels, a):
    """TFA's batch-hard choice for anchor a: (p0, p_ties, n0, n_ties), the first of its farthest
    positives and how many tie with it, the first of its nearest negatives and how many tie.
    Without positive, TFA's masked maximum is the smallest entry of the row (a itself included);
    without negative, its masked minimum is the largest: the ties then count every entry of the
    row at that distance (`hard_candidate`)."""
    N = distances.shape[0]
    p0 = -1
    n0 = -1
    for n in range(N):
        if labels[n] == labels[a]:
            if n != a and (p0 == -1 or distances[n] > distances[p0]):
                p0 = n
        elif n0 == -1 or distances[n] < distances[n0]:
            n0 = n
    has_positive, has_negative = p0 != -1, n0 != -1
    if not has_positive:
        p0 = 0
        for n in range(1, N):
            if distances[n] < distances[p0]:
                p0 = n
    if not has_negative:
        n0 = 0
        for n in range(1, N):
            if distances[n] > distances[n0]:
                n0 = n
    p_ties = 0
    n_ties = 0
    for n in range(N):
        positive = labels[n] == labels[a] and n != a
        p_ties += (positive or not has_positive) and distances[n] == distances[p0]
        n_ties += (labels[n] != labels[a] or not has_negative) and distances[n] == distances[n0]
    return p0, p_ties, n0, n_ties


@jit
def hard_candidate(labels, a, n, has_positives, has_negatives):
    """(n may be a's hardest positive, n may be its hardest negative), TFA's fallbacks included."""
    same = labels[n] == labels[a]
    return (same and n != a) or not has_positives, not same or not has_negatives


@jit(inline="always")
def triplet_counts(d_ap, d_an, margin, rule, epsilon):
    """One triplet (a, p, n) of "batch-all" or "all-semihard" (`_rules.CODES`), from D[a, p] and
    D[a, n]: (l, kept, counted, passes). l = (d_ap - d_an) + margin, as the references compute it;
    kept: the rule uses it (all-semihard: 0 < d_an - d_ap <= margin); counted: its mean counts it
    (l > epsilon, where batch-all passes 1e-16 and all-semihard 0); passes: it passes gradient
    (batch-all's clamp passes l >= 0, the relu l > 0)."""
    zero = epsilon - epsilon
    l = (d_ap - d_an) + margin
    kept = rule == BATCH_ALL_CODE or (zero < d_an - d_ap and d_an - d_ap <= margin)
    passes = l >= zero if rule == BATCH_ALL_CODE else l > zero
    return l, kept, kept and l > epsilon, kept and passes


@jit
def pair_triplets(distances, labels, a, p, margin, rule, epsilon, grad):
    """The post's loop over the negatives of the pair (a, p) for "batch-all" and "all-semihard":
    (total, counted, active, farther, passing): the sum of the losses l > 0 of the rule's
    triplets, how many count in the mean, how many have l > 0, how many negatives lie strictly
    farther than p (over every negative), how many pass gradient (`triplet_counts`). A grad of
    the batch's length (empty: none) gets the -1 of every negative whose triplet passes."""
    zero = epsilon - epsilon
    total = 0.0
    counted = active = farther = passing = 0
    for n in range(distances.shape[0]):
        if labels[a] == labels[n]:
            continue
        farther += distances[n] > distances[p]
        l, kept, count, passes = triplet_counts(distances[p], distances[n], margin, rule, epsilon)
        if not kept:
            continue  # all-semihard: not semi-hard
        if l > zero:
            total += l
            active += 1
        counted += count
        passing += passes
        if passes and grad.shape[0] > 0:
            grad[n] -= 1
    return total, counted, active, farther, passing


@jit
def passing_positives(distances, positives, a, n, margin, rule, epsilon):
    """How many of a's positives make a triplet with the negative n that passes gradient: n's
    share of -1s in the gradient of the rule's sum. positives: a's class, a included (skipped).
    For the "cuda" kernel, whose threads split the positives and so cannot share a grad row."""
    passing = 0
    for p in positives:
        if p != a:
            passing += triplet_counts(distances[p], distances[n], margin, rule, epsilon)[3]
    return passing

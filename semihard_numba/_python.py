"""Backend "python": the post's triple loop in plain Python, the executable specification.

The loop follows `semiHardTripletLoss` from the post (README.md, "Where it comes from") almost word
for word. Where the post departs from TensorFlow Addons, TFA wins and a comment says so:
- the margin plays no part in choosing the negative (the post skipped negatives beyond D[a,p] + alpha;
  the loss is the same, the negative reported by `mine_semihard` is not);
- the farthest negative starts from -inf, not 1e-10 (all negatives at distance 0 give 0, as TFA);
- an anchor with no negative at all uses the smallest entry of its distance row (TFA's masked maximum
  over an empty mask);
- no positive pair in the batch gives 0.0 (TFA returns NaN there: 0 / 0).
Distances come from TFA's formula (`pairwise_distances`), not from the post's explicit differences.
"""

import numpy as np

from ._distances import distance_backward, pairwise_distances
from ._mining import MiningResult


def _choose_negative(D, labels, a, p):
    """The negative TFA pairs with (a, p): (distance, first index, all indices at that distance,
    whether it is semi-hard). Index -1 when a has no negative at all."""
    Min = np.inf
    Max = -np.inf  # the post starts at 1e-10; TFA's masked maximum gives 0 for negatives at 0
    n0 = -1
    n_far = -1
    for n in range(len(labels)):  # find suiting negative
        if labels[a] == labels[n]:
            continue
        if D[a, n] > Max:
            Max = D[a, n]  # the easiest negative, used if no semi-hard negative is found
            n_far = n
        if D[a, n] <= D[a, p]:
            continue  # semi-hard means strictly farther than the positive; TFA ignores the margin here
        if D[a, n] < Min:
            n0 = n
            Min = D[a, n]  # the hardest semi-hard negative
    if n0 != -1:
        d_an, semihard = Min, True
    elif n_far != -1:
        d_an, semihard = Max, False
    else:  # a has no negative: TFA's masked maximum falls back to the row's smallest distance
        d_an, semihard = D[a].min(), False
        return d_an, -1, [n for n in range(len(labels)) if D[a, n] == d_an], semihard
    ties = [n for n in range(len(labels)) if labels[n] != labels[a] and D[a, n] == d_an]
    return d_an, (n0 if semihard else n_far), ties, semihard


def _triplets(labels, D, margin):
    """Yield (a, p, negative, ties, triplet loss, semi-hard?) for every ordered positive pair."""
    N = len(labels)
    for a in range(N):  # give every embedding in the batch the chance to be an anchor
        for p in range(N):  # try all positives for the anchor
            if a == p:
                continue  # positive cannot be the same as the anchor
            if labels[a] != labels[p]:
                continue  # positive must have same label as anchor
            d_an, n, ties, semihard = _choose_negative(D, labels, a, p)
            l = max(margin + (D[a, p] - d_an), D.dtype.type(0))
            yield a, p, n, ties, l, semihard


def mine(batch):
    D = pairwise_distances(batch.x, batch.metric)
    margin = D.dtype.type(batch.margin)
    rows = [(a, p, n, semihard, l) for a, p, n, _, l, semihard in _triplets(batch.codes, D, margin)]
    return MiningResult.from_rows(rows, D.dtype)


def loss(batch):
    D = pairwise_distances(batch.x, batch.metric)
    margin = D.dtype.type(batch.margin)
    L = 0.0
    count = 0
    for *_, l, _ in _triplets(batch.codes, D, margin):
        L += float(l)
        count += 1
    return L / count if count > 0 else 0.0  # TFA: 0 / 0 = NaN with no positive pair


def loss_and_grad(batch):
    D = pairwise_distances(batch.x, batch.metric)
    margin = D.dtype.type(batch.margin)
    triplets = list(_triplets(batch.codes, D, margin))
    if not triplets:
        return 0.0, np.zeros_like(batch.x)
    count = len(triplets)
    dD = np.zeros_like(D)  # dL/dD
    for a, p, _, ties, l, _ in triplets:
        if (
            margin + (D[a, p] - D[a, ties[0]]) >= 0
        ):  # on the hinge TF's maximum still passes gradient
            dD[a, p] += 1 / count
            for n in ties:  # negatives tied at the chosen distance share its gradient equally
                dD[a, n] -= 1 / (count * len(ties))
    return sum(float(t[4]) for t in triplets) / count, distance_backward(
        batch.x, D, dD, batch.metric
    )

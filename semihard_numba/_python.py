"""Backend "python": the post's triple loop in plain Python, the executable specification.

The semi-hard loop follows `semiHardTripletLoss` from the post (README.md, "Where it comes from")
almost word for word. Where the post departs from TensorFlow Addons, TFA wins and a comment says so:
- the margin plays no part in choosing the negative (the post skipped negatives beyond D[a,p] + alpha;
  the loss is the same, the negative reported by `mine_semihard` is not);
- the farthest negative starts from -inf, not 1e-10 (all negatives at distance 0 give 0, as TFA);
- an anchor with no negative at all uses the smallest entry of its distance row (TFA's masked maximum
  over an empty mask);
- no positive pair in the batch gives 0.0 (TFA returns NaN there: 0 / 0).
Distances come from TFA's formula (`pairwise_distances`), not from the post's explicit differences.

The other rules (`_rules.py`) are the same kind of loop: over anchors, their positives and their
negatives, in the definitions of TFA's `triplet_hard_loss`, sentence-transformers'
`BatchAllTripletLoss` and pytorch-metric-learning's semi-hard miner with `TripletMarginLoss`.

Each loop returns the sum over the rule's triplets, its `TripletStats`, and dS/dD: the gradient of
that sum with respect to the distance matrix, as TensorFlow's and PyTorch's autodiff give it (a loss
exactly on the hinge still passes gradient where theirs does; tied candidates share it).
"""

import math

import numpy as np

from ._distances import evaluate_dense, pairwise_distances
from ._mining import MiningResult
from ._rules import ALL_SEMIHARD, BATCH_ALL, BATCH_ALL_EPSILON, HARD, SEMIHARD, TripletStats


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


def _triplets(labels, D, margin, anchors):
    """Yield (a, p, negative, ties, triplet loss, semi-hard?) for every ordered positive pair of
    the anchors."""
    N = len(labels)
    for a in anchors:  # give every embedding in the batch the chance to be an anchor
        for p in range(N):  # try all positives for the anchor
            if a == p:
                continue  # positive cannot be the same as the anchor
            if labels[a] != labels[p]:
                continue  # positive must have same label as anchor
            d_an, n, ties, semihard = _choose_negative(D, labels, a, p)
            l = max(margin + (D[a, p] - d_an), D.dtype.type(0))
            yield a, p, n, ties, l, semihard


def _semihard(labels, D, margin, soft, anchors):
    total, dS, losses = 0.0, np.zeros_like(D), []
    pairs = active = semihard_pairs = 0
    for a, p, _, ties, l, semihard in _triplets(labels, D, margin, anchors):
        total += float(l)
        losses.append(l)
        pairs += 1
        active += l > 0
        semihard_pairs += semihard
        if margin + (D[a, p] - D[a, ties[0]]) >= 0:  # on the hinge TF's maximum passes gradient
            dS[a, p] += 1
            for n in ties:  # negatives tied at the chosen distance share its gradient equally
                dS[a, n] -= 1 / len(ties)
    return total, TripletStats(pairs, pairs, active, semihard_pairs), dS, losses


def _softplus(z):
    """log1p(exp(z)) without overflow (TF's float32 form gives inf from z ~ 89 on)."""
    return max(z, 0.0) + math.log1p(math.exp(-abs(z)))


def _hard(labels, D, margin, soft, anchors):
    """TFA's triplet_hard_loss: per anchor, its farthest positive against its nearest negative."""
    N = len(labels)
    total, dS, losses = 0.0, np.zeros_like(D), []
    pairs = active = semihard = 0
    for a in anchors:
        positives = [p for p in range(N) if p != a and labels[p] == labels[a]]
        negatives = [n for n in range(N) if labels[n] != labels[a]]
        pairs += len(positives)
        # TFA's masked maximum and minimum: over no candidate, the row's minimum and maximum
        hp = max(D[a, p] for p in positives) if positives else D[a].min()
        hn = min(D[a, n] for n in negatives) if negatives else D[a].max()
        z = float(hp - hn)
        if soft:
            l, slope = _softplus(z), 0.5 * (1 + math.tanh(z / 2))  # the sigmoid, without overflow
        else:
            l = float(max(hp - hn + margin, D.dtype.type(0)))
            slope = 1.0 if hp - hn + margin >= 0 else 0.0  # on the hinge TF passes gradient
        total += l
        losses.append(l)
        active += l > 0
        semihard += hp < hn
        hardest = [p for p in positives if D[a, p] == hp] or [n for n in range(N) if D[a, n] == hp]
        nearest = [n for n in negatives if D[a, n] == hn] or [n for n in range(N) if D[a, n] == hn]
        for p in hardest:  # tied candidates share the gradient, as TF's reduce_max gives it
            dS[a, p] += slope / len(hardest)
        for n in nearest:
            dS[a, n] -= slope / len(nearest)
    return total, TripletStats(pairs, len(anchors), active, semihard), dS, losses


def _every_triplet(labels, D, margin, anchors, keep, count, passes):
    """Sum over the triplets (a, p, n) that `keep(d_ap, d_an)` selects of l = (d_ap - d_an) +
    margin where l > 0; the denominator counts those with `count(l)`; dS is the gradient of the
    sum, which PyTorch passes where `passes(l)` (l >= 0 through batch-all's clamp, l > 0 through
    the relu). Per pair (a, p), the sum of its losses."""
    N = len(labels)
    total, dS, losses = 0.0, np.zeros_like(D), []
    pairs = denominator = active = semihard = 0
    for a in anchors:
        for p in range(N):
            if p == a or labels[p] != labels[a]:
                continue
            pairs += 1
            losses.append(0.0)
            for n in range(N):
                if labels[n] == labels[a]:
                    continue
                semihard += D[a, p] < D[a, n]
                if not keep(D[a, p], D[a, n]):
                    continue
                l = (D[a, p] - D[a, n]) + margin
                total += float(max(l, 0))
                losses[-1] += float(max(l, 0))
                denominator += count(l)
                active += l > 0
                if passes(l):
                    dS[a, p] += 1
                    dS[a, n] -= 1
    return total, TripletStats(pairs, denominator, active, semihard), dS, losses


def _any(d_ap, d_an):
    return True


def _batch_all(labels, D, margin, soft, anchors):
    """sentence-transformers' BatchAllTripletLoss: every triplet, the mean over losses > 1e-16."""
    epsilon = D.dtype.type(BATCH_ALL_EPSILON)
    return _every_triplet(labels, D, margin, anchors, _any, lambda l: l > epsilon, lambda l: l >= 0)


def _all_semihard(labels, D, margin, soft, anchors):
    """pytorch-metric-learning's semi-hard miner and TripletMarginLoss: the triplets with
    0 < d_an - d_ap <= margin (FaceNet's semi-hard triplets), the mean over losses > 0."""

    def semihard(d_ap, d_an):
        return 0 < d_an - d_ap <= margin

    return _every_triplet(labels, D, margin, anchors, semihard, lambda l: l > 0, lambda l: l > 0)


_RULES = {SEMIHARD: _semihard, HARD: _hard, BATCH_ALL: _batch_all, ALL_SEMIHARD: _all_semihard}


def _sum_of(labels, D, margin, rule, anchors):
    return _RULES[rule.name](labels, D, margin, rule.soft, anchors)


def evaluate(batch, rule, want_grad, reduction="mean"):
    """(loss, TripletStats, gradient or None) of `rule` (a `_rules.Rule`) on the batch."""
    return evaluate_dense(batch, rule, want_grad, reduction, _sum_of)


def mine(batch):
    D = pairwise_distances(batch.x, batch.metric)
    margin = D.dtype.type(batch.margin)
    triplets = _triplets(batch.codes, D, margin, batch.anchors)
    rows = [(a, p, n, semihard, l) for a, p, n, _, l, semihard in triplets]
    return MiningResult.from_rows(rows, D.dtype)

"""The triplet rules the library computes, and what each one's mean divides by.

Every backend evaluates a rule as a sum over its triplets, with the gradient of that sum, and the
counts of `TripletStats`; `Rule.scale` then turns the sum into the loss the user asked for. Keeping
the sum and the denominator apart is what lets a batch be split across processes and the parts
added up exactly.

| rule | triplets | mean over |
|---|---|---|
| "semihard" | TFA's one negative per positive pair (a, p) | the pairs |
| "hard" | TFA's hardest positive and hardest negative per anchor | the B anchors |
| "batch-all" | every (a, p, n) (sentence-transformers) | the losses > 1e-16, + 1e-16 |
| "all-semihard" | every (a, p, n) with 0 < D[a,n] - D[a,p] <= margin (pytorch-metric-learning) | the losses > 0 |
"""

from dataclasses import dataclass

SEMIHARD, HARD, BATCH_ALL, ALL_SEMIHARD = "semihard", "hard", "batch-all", "all-semihard"
CODES = {SEMIHARD: 0, HARD: 1, BATCH_ALL: 2, ALL_SEMIHARD: 3}  # as the compiled kernels know them

# sentence-transformers' BatchAllTripletLoss counts the losses above this and adds it to the count
BATCH_ALL_EPSILON = 1e-16


@dataclass(frozen=True)
class TripletStats:
    """What one pass over a batch counted (``return_stats=True``).

    Attributes
    ----------
    pairs : int
        Ordered positive pairs (a, p): a != p with the same label.
    denominator : int
        What the mean divided by: the pairs ("semihard"), B ("hard"), the triplets whose loss is
        above 1e-16 ("batch-all", which divides by this + 1e-16) or above 0 ("all-semihard").
    active : int
        Triplets whose loss is > 0.
    semihard : int
        "semihard": the pairs whose negative is a true semi-hard one (`mine_semihard`'s flag).
        The other rules: their triplets with D[a, p] < D[a, n].
    """

    pairs: int
    denominator: int
    active: int
    semihard: int


@dataclass(frozen=True)
class Rule:
    """A rule as the backends receive it. `soft` only for "hard" (log1p(exp(hp - hn)))."""

    name: str
    soft: bool = False

    @property
    def code(self):
        return CODES[self.name]

    def scale(self, denominator, reduction="mean"):
        """The factor that turns the sum over the rule's triplets into the loss: 1 for the
        reductions "sum" and "none", else the rule's mean."""
        if reduction != "mean":
            return 1.0
        if self.name == BATCH_ALL:
            return 1.0 / (denominator + BATCH_ALL_EPSILON)
        return 1.0 / denominator if denominator > 0 else 0.0

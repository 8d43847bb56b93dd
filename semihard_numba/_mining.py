"""The result of `mine_semihard`: which negative TFA's rule pairs with every positive pair."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MiningResult:
    """One entry per ordered positive pair (a, p), a != p with the same label, ordered by a then p.

    Attributes
    ----------
    anchor, positive : int64 arrays
    negative : int64 array
        The chosen negative: the closest negative strictly farther from the anchor than the
        positive (semi-hard), else the anchor's farthest negative. On exact ties the lowest index.
        -1 where the anchor has no negative at all (its loss then uses the smallest distance of
        its row, as TFA does).
    semihard : bool array
        True where the negative is semi-hard, False where it is the fallback.
    loss : float array (the computation's dtype)
        max(margin + D[a, p] - D[a, n], 0) for the triplet.
    """

    anchor: np.ndarray
    positive: np.ndarray
    negative: np.ndarray
    semihard: np.ndarray
    loss: np.ndarray

    def __len__(self):
        return len(self.anchor)

    @classmethod
    def from_rows(cls, rows, dtype):
        """Build from (anchor, positive, negative, semihard, loss) tuples."""
        columns = list(zip(*rows)) if rows else [()] * 5
        return cls(
            anchor=np.asarray(columns[0], dtype=np.int64),
            positive=np.asarray(columns[1], dtype=np.int64),
            negative=np.asarray(columns[2], dtype=np.int64),
            semihard=np.asarray(columns[3], dtype=bool),
            loss=np.asarray(columns[4], dtype=dtype),
        )

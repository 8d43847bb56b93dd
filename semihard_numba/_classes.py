"""Class tables: built once per call from the label codes, shared by the compiled backends."""

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Classes:
    """Who is in which class, and where each anchor's positive pairs go in a per-pair output.

    Pairs (a, p), a != p with the same label, are ordered by anchor, then by positive index: the
    pairs of anchors[i], the i-th of the anchors asked for, are pair_offset[i] ...
    pair_offset[i + 1] - 1 (`mine_semihard`'s order).
    """

    counts: np.ndarray  # (C,) int64: samples per class
    members: np.ndarray  # (B,) int64: class c is members[start[c]:start[c + 1]], increasing
    start: np.ndarray  # (C + 1,) int64
    position: np.ndarray  # (B,) int64: i == members[start[codes[i]] + position[i]]
    pair_offset: np.ndarray  # (A + 1,) int64 for A anchors

    @property
    def n_pairs(self):
        return int(self.pair_offset[-1])


def class_tables(codes, anchors):
    """The `Classes` of int codes 0 .. C-1, with the pairs of `anchors` (increasing indices)."""
    B = codes.shape[0]
    counts = np.bincount(codes).astype(np.int64)
    members = np.argsort(codes, kind="stable").astype(np.int64)
    start = np.zeros(counts.size + 1, dtype=np.int64)
    np.cumsum(counts, out=start[1:])
    position = np.empty(B, dtype=np.int64)
    position[members] = np.arange(B) - start[codes[members]]
    pair_offset = np.zeros(anchors.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts[codes[anchors]] - 1, out=pair_offset[1:])
    return Classes(counts, members, start, position, pair_offset)

"""Clustered, L2-normalised batches like real training batches, shared by the benchmark scripts."""

import numpy as np


def clustered_batch(batch_size, per_class=4, dim=128, noise=1.0, seed=0):
    """(labels int64 (B,), embeddings float32 (B, D)): batch_size // per_class classes of per_class
    samples (the last class takes the remainder), shuffled.

    Class centres are random unit vectors; every sample is its centre plus Gaussian noise whose
    expected norm is `noise` (per coordinate noise / sqrt(D)), then L2-normalised. With noise = 1
    the positives of an anchor sit about as far away as some negatives, so the semi-hard rule
    really has to search (the report shows the fraction of pairs that found a semi-hard negative).
    """
    rng = np.random.default_rng(seed)
    n_classes = max(1, batch_size // per_class)
    labels = np.minimum(np.arange(batch_size) // per_class, n_classes - 1).astype(np.int64)
    centres = rng.standard_normal((n_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + (noise / np.sqrt(dim)) * rng.standard_normal((batch_size, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(batch_size)
    return labels[order], np.ascontiguousarray(x[order], dtype=np.float32)


def batch_statistics(labels, embeddings, margin=1.0, chunk=1024):
    """What the batch asks of the semi-hard rule, over the ordered positive pairs (a, p):

    semihard_frac  pairs whose chosen negative is a true semi-hard one (D[a,n] > D[a,p]), i.e.
                   ``mine_semihard(...).semihard.mean()`` (the rest fall back to the farthest);
    active_frac    pairs whose triplet loss is > 0 (the negative lies inside the margin);
    hard_frac      pairs with some negative closer than the positive (D[a,n] < D[a,p]): the
                   search is not trivial when this is well above 0.
    """
    import semihard_numba

    mined = semihard_numba.mine_semihard(labels, embeddings, margin=margin, backend="cpu")
    semihard = float(mined.semihard.mean()) if mined.semihard.size else float("nan")
    active = float((mined.loss > 0).mean()) if mined.loss.size else float("nan")
    x = embeddings.astype(np.float64)
    sq = (x * x).sum(1)
    hard = pairs = 0
    for start in range(0, len(labels), chunk):
        rows = slice(start, start + chunk)
        d = np.sqrt(np.maximum(sq[rows, None] + sq[None, :] - 2.0 * x[rows] @ x.T, 0.0))
        same = labels[rows, None] == labels[None, :]
        closest_negative = np.where(same, np.inf, d).min(1)
        positive = same.copy()
        positive[np.arange(d.shape[0]), np.arange(start, start + d.shape[0])] = False
        hard += int((positive & (d > closest_negative[:, None])).sum())
        pairs += int(positive.sum())
    return {
        "semihard_frac": semihard,
        "active_frac": active,
        "hard_frac": hard / pairs if pairs else float("nan"),
    }

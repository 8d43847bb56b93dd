"""The benchmark's batches (the package's own generator) and what they ask of the semi-hard rule."""

import numpy as np

from semihard_numba._batches import clustered_batch


def benchmark_batch(batch_size, per_class=4, classes=None, dim=128, noise=1.5, seed=0):
    """The benchmark's batch: `classes` classes of batch_size // classes samples when `classes` is
    given (the core targets' "2 classes of 2048" at B = 4096, where every anchor has thousands of
    positives), else classes of `per_class` samples."""
    if classes:
        per_class = batch_size // classes
    return clustered_batch(batch_size, per_class, dim, noise, seed)


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

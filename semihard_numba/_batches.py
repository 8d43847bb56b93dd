"""Clustered, L2-normalised batches like real training batches: the one generator behind the demo
(`python -m semihard_numba`), the tests and the benchmarks."""

import numpy as np


def clustered_batch(batch_size, per_class=4, dim=128, noise=1.0, seed=0, dtype=np.float32):
    """(labels int64 (B,), embeddings (B, D) of `dtype`): batch_size // per_class classes of
    per_class samples (the last class takes the remainder), shuffled.

    Class centres are random unit vectors; every sample is its centre plus Gaussian noise whose
    expected norm is `noise` (per coordinate noise / sqrt(D)), then L2-normalised. With noise = 1
    the positives of an anchor sit about as far away as some negatives, so the semi-hard rule
    really has to search.
    """
    rng = np.random.default_rng(seed)
    n_classes = max(1, batch_size // per_class)
    labels = np.minimum(np.arange(batch_size) // per_class, n_classes - 1).astype(np.int64)
    centres = rng.standard_normal((n_classes, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    x = centres[labels] + (noise / np.sqrt(dim)) * rng.standard_normal((batch_size, dim))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    order = rng.permutation(batch_size)
    return labels[order], np.ascontiguousarray(x[order], dtype=dtype)

"""An independent float64 statement of TFA's rule and of its natural subgradient, written from the
definition with no code shared with the library. Slow; for small batches in tests."""

import numpy as np


def distances(x, metric):
    x = np.asarray(x, dtype=np.float64)
    if metric == "angular":
        n = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-6)
        return np.maximum(1 - n @ n.T, 0)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return d2 if metric == "squared-L2" else np.sqrt(d2)


def triplets(labels, D):
    """(a, p, tied negatives, semi-hard?) for every ordered positive pair, from the definition."""
    B = len(labels)
    out = []
    for a in range(B):
        negatives = [n for n in range(B) if labels[n] != labels[a]]
        for p in range(B):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [n for n in negatives if D[a, n] > D[a, p]]
            if farther:
                d = min(D[a, n] for n in farther)
            elif negatives:
                d = max(D[a, n] for n in negatives)
            else:
                d = D[a].min()
            candidates = negatives if negatives else range(B)
            out.append((a, p, [n for n in candidates if D[a, n] == d], bool(farther)))
    return out


def loss_and_grad_l2(labels, x, margin):
    """Loss and natural subgradient for the "L2" metric: +1 on D[a,p], -1 shared by tied negatives,
    for every pair with margin + D[a,p] - D[a,n] >= 0; zero distances pass nothing."""
    x = np.asarray(x, dtype=np.float64)
    D = distances(x, "L2")
    chosen = triplets(labels, D)
    grad = np.zeros_like(x)

    def add(i, j, w):  # w * dD[i, j] / dx
        if D[i, j] > 0:
            u = (x[i] - x[j]) / D[i, j]
            grad[i] += w * u
            grad[j] -= w * u

    total = 0.0
    for a, p, ties, _ in chosen:
        hinge = margin + D[a, p] - D[a, ties[0]]
        total += max(hinge, 0)
        if hinge >= 0:
            add(a, p, 1 / len(chosen))
            for n in ties:
                add(a, n, -1 / (len(chosen) * len(ties)))
    return (total / len(chosen) if chosen else 0.0), grad

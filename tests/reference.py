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


def chain(x, dD, metric):
    """dL/dx from dL/dD through the exact "L2" or "squared-L2" distances (zero distances pass no
    gradient): D_ij depends on x_i and x_j, hence dD + dD^T."""
    x = np.asarray(x, dtype=np.float64)
    D = distances(x, metric)
    differences = x[:, None, :] - x[None, :, :]  # x_i - x_j
    if metric == "L2":
        factor = np.where(D > 0, 1 / np.where(D > 0, D, 1), 0)  # dD_ij/dx_i = (x_i - x_j) / D_ij
    else:
        factor = 2.0 * (D > 0)  # d|x_i - x_j|^2 / dx_i = 2 (x_i - x_j)
    return (((dD + dD.T) * factor)[:, :, None] * differences).sum(axis=1)


def hard_loss(labels, x, margin, soft, metric):
    """TFA's triplet_hard_loss from its definition in float64 (softplus without overflow)."""
    labels = np.asarray(labels)
    D = distances(x, metric)
    B = len(labels)
    total = 0.0
    for a in range(B):
        positives = [D[a, p] for p in range(B) if p != a and labels[p] == labels[a]]
        negatives = [D[a, n] for n in range(B) if labels[n] != labels[a]]
        hp = max(positives) if positives else D[a].min()
        hn = min(negatives) if negatives else D[a].max()
        total += np.logaddexp(0.0, hp - hn) if soft else max(hp - hn + margin, 0.0)
    return total / B


def every_triplet(labels, x, margin, rule, metric):
    """(loss, count, grad) of "batch-all" or "all-semihard" from their definitions in float64."""
    labels = np.asarray(labels)
    D = distances(x, metric)
    same = labels[:, None] == labels[None, :]
    valid = (same & ~np.eye(len(labels), dtype=bool))[:, :, None] & ~same[:, None, :]
    l = D[:, :, None] - D[:, None, :] + margin  # [a, p, n]
    if rule == "batch-all":
        kept, counted, passes = valid, l > 1e-16, l >= 0
    else:
        m = D[:, None, :] - D[:, :, None]
        kept = valid & (m > 0) & (m <= margin)
        counted = passes = l > 0
    count = int((kept & counted).sum())
    denominator = count + 1e-16 if rule == "batch-all" else max(count, 1)
    loss = np.where(kept & (l > 0), l, 0).sum() / denominator
    w = (kept & passes) / denominator
    return loss, count, chain(x, w.sum(axis=2) - w.sum(axis=1), metric)

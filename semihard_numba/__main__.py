"""`python -m semihard_numba`: the loss of a built-in example batch on every usable backend."""

import argparse
import time

import numpy as np

from . import backends, mine_semihard, triplet_semihard_loss
from ._batches import clustered_batch
from ._cache import CACHE


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m semihard_numba", description=__doc__)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--dim", type=int, default=32)
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--metric", default="L2", choices=["L2", "squared-L2", "angular"])
    args = parser.parse_args(argv)

    labels, x = clustered_batch(args.batch_size, args.per_class, args.dim)
    # The backends run before the mining below, which would compile the "cpu" kernels: the "cpu"
    # row's first call is this process's first, compiling its kernels or loading them from disk.
    losses, rows = {}, []
    for name, (usable, reason) in backends().items():
        if not usable:
            rows.append(f"{name:<8} {'-':>12}   not usable here: {reason}")
            continue
        times = []
        for _ in range(2):
            start = time.perf_counter()
            losses[name] = triplet_semihard_loss(labels, x, args.margin, args.metric, backend=name)
            times.append(time.perf_counter() - start)
        rows.append(f"{name:<8} {losses[name]:>12.7f} {times[0]:>11.4f}s {times[1]:>11.4f}s")
    mined = mine_semihard(labels, x, args.margin, args.metric, backend="cpu")

    print(
        f"batch: B = {len(labels)}, D = {args.dim}, {len(np.unique(labels))} classes, "
        f"metric {args.metric}, margin {args.margin}"
    )
    found = f", {mined.semihard.mean():.0%} with a semi-hard negative" if len(mined) else ""
    print(f"{len(mined)} positive pairs{found}\n")
    print(f"{'backend':<8} {'loss':>12} {'first call':>12} {'next call':>12}")
    print("\n".join(rows))
    how = "or loading them from Numba's disk cache" if CACHE else "(SEMIHARD_NUMBA_CACHE=0)"
    print(f"\nfirst call: this process's first, compiling a compiled backend's kernels {how}")
    values = np.array(list(losses.values()), dtype=np.float64)
    spread = values.max() - values.min()
    agree = np.allclose(values, values[0], rtol=1e-5, atol=1e-6)
    print(
        f"\nlargest difference between backends: {spread:.2e} "
        f"({'they agree' if agree else 'THEY DISAGREE'})"
    )
    return 0 if agree else 1


if __name__ == "__main__":
    raise SystemExit(main())

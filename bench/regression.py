"""This checkout against an earlier commit, same process: ``python -m bench.regression``.

Copies the package as it was at --commit (git archive) into a temporary directory under another
name, imports both, and times the "cpu" loss and loss+gradient of each on the same batches in
interleaved rounds (new, old, new, old, ...), so both see the same machine state. Each call starts
after a pause longer than the thread pools spin (OpenBLAS's about 0.1 s), so that neither pays for
the other's idle threads. Prints the median of each and the ratio new / old. Needs git and the
repository's history.
"""

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time

from bench.loop import SETTLE_S

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def import_commit(commit, into):
    """The package `semihard_numba` as it was at `commit`, imported as semihard_numba_<commit>."""
    name = f"semihard_numba_{commit}"
    archive = os.path.join(into, "old.tar")
    subprocess.run(
        ["git", "archive", "-o", archive, commit, "semihard_numba"], cwd=ROOT, check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    os.rename(os.path.join(into, "semihard_numba"), os.path.join(into, name))
    sys.path.insert(0, into)
    return importlib.import_module(name)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.regression", description=__doc__)
    parser.add_argument("--commit", default="7ce4dd0", help="the earlier commit (default 7ce4dd0)")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--batch-size", type=int, default=4096)
    args = parser.parse_args(argv)

    import numpy as np

    import semihard_numba as new
    from semihard_numba._batches import clustered_batch

    with tempfile.TemporaryDirectory() as tmp:
        old = import_commit(args.commit, tmp)
        B = args.batch_size
        print(
            f"semihard_numba here against {args.commit}, B={B}, D=128, float32, {args.rounds} rounds"
        )
        print("| batch | call | here, ms | old, ms | here / old |")
        print("|---|---|---:|---:|---:|")
        for per_class, name in ((4, "4 per class"), (B // 2, f"2 classes of {B // 2}")):
            labels, x = clustered_batch(B, per_class, 128)
            for call in ("triplet_semihard_loss", "triplet_semihard_loss_and_grad"):
                functions = {"new": getattr(new, call), "old": getattr(old, call)}
                results = {k: f(labels, x, backend="cpu") for k, f in functions.items()}  # compile
                first = [np.asarray(r[0] if isinstance(r, tuple) else r) for r in results.values()]
                assert np.allclose(*first, rtol=1e-6), first
                times = {"new": [], "old": []}
                for _ in range(args.rounds):
                    for key, f in functions.items():
                        time.sleep(SETTLE_S)
                        t0 = time.perf_counter()
                        f(labels, x, backend="cpu")
                        times[key].append(time.perf_counter() - t0)
                here, before = (statistics.median(times[k]) * 1e3 for k in ("new", "old"))
                print(f"| {name} | {call} | {here:.1f} | {before:.1f} | {here / before:.2f} |")


if __name__ == "__main__":
    main()

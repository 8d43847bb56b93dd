"""The loss called in a plain loop, under three thread settings: ``python -m bench.threads``.

NumPy's OpenBLAS keeps its worker threads busy-waiting for a while after each product
(`OPENBLAS_THREAD_TIMEOUT`), and Numba's OpenMP threads do the same after each parallel loop
(`OMP_WAIT_POLICY`). Both are read when the libraries load, so each setting gets its own process.
Each process calls the "cpu" loss, then the loss and gradient, back to back with nothing in
between (unlike `python -m bench`, whose workers run `x @ x.T` before each call), and prints
medians in ms.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {
    "default": {},
    "OPENBLAS_THREAD_TIMEOUT=4": {"OPENBLAS_THREAD_TIMEOUT": "4"},
    "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
}


def plain_loop(sizes, repeats):
    """{B: (loss ms, loss and gradient ms)}, medians of `repeats` back-to-back calls."""
    import semihard_numba as sn
    from semihard_numba._batches import clustered_batch

    out = {}
    for B in sizes:
        labels, x = clustered_batch(B, 4, 128)[:2]
        medians = []
        for fn in (sn.triplet_semihard_loss, sn.triplet_semihard_loss_and_grad):
            fn(labels, x, backend="cpu")  # compile or load, and warm up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn(labels, x, backend="cpu")
                times.append(time.perf_counter() - start)
            medians.append(statistics.median(times) * 1e3)
        out[B] = medians
    return out


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.threads", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(plain_loop(a.sizes, a.repeats)))
        return
    results = {}
    for name, extra in SETTINGS.items():
        env = {**os.environ, **extra, "PYTHONPATH": ROOT}
        for variable in ("OPENBLAS_THREAD_TIMEOUT", "OMP_WAIT_POLICY"):
            if variable not in extra:
                env.pop(variable, None)
        command = [sys.executable, "-m", "bench.threads", "--child", "--repeats", str(a.repeats)]
        command += ["--sizes", *map(str, a.sizes)]
        child = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
        if child.returncode != 0:
            sys.exit(child.stderr)
        results[name] = json.loads(child.stdout.splitlines()[-1])
    print("| B, 4 per class | " + " | ".join(SETTINGS) + " |")
    print("|---" * (len(SETTINGS) + 1) + "|")
    for B in map(str, a.sizes):
        cells = [f"{results[n][B][0]:.3g} / {results[n][B][1]:.3g} ms" for n in SETTINGS]
        print(f"| {B}: loss / loss and gradient | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

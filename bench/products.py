"""The Gram matrix of the "cpu" backend: ``python -m bench.products``.

NumPy's ``y @ y.T`` (a BLAS syrk plus a mirror copy of its triangle) against the same product as a
plain gemm, ``y @ y.copy().T``, over B, D and dtype; this sets
`semihard_numba._distances.GRAM_GEMM_MAX_DIM`.

Medians of warm calls, milliseconds, in this process.
"""

import argparse
import statistics
import time

import numpy as np


def median_ms(fn, repeats):
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def print_gram_table(shapes, repeats):
    rng = np.random.default_rng(0)
    print("| B | D | dtype | y @ y.T | y @ y.copy().T | ratio | same bits |")
    print("|---|---|---|---:|---:|---:|---|")
    for B, D in shapes:
        for dtype in (np.float32, np.float64):
            y = rng.random((B, D)).astype(dtype)
            syrk = median_ms(lambda: y @ y.T, repeats)
            gemm = median_ms(lambda: y @ y.copy().T, repeats)
            same = np.array_equal(y @ y.T, y @ y.copy().T)
            print(
                f"| {B} | {D} | {np.dtype(dtype).name} | {syrk:.1f} | {gemm:.1f} | "
                f"{syrk / gemm:.2f} | {'yes' if same else 'no'} |",
                flush=True,
            )


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench.products", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    shapes = [
        (4096, 64),
        (4096, 128),
        (4096, 256),
        (4096, 384),
        (4096, 512),
        (4096, 1024),
        (16384, 64),
    ]
    print("Gram matrix, ms:")
    print_gram_table(shapes, a.repeats)


if __name__ == "__main__":
    main()

"""What tests/test_concurrency.py runs in a subprocess:

    python tests/concurrent_calls.py [THREADS CALLS BATCH]

Every rule, the loss and the loss with its gradient, computed first in this thread, then by
THREADS Python threads at once, CALLS times each. Every concurrent result must be bit-identical to
the single-threaded one, and OpenBLAS must have its own thread count back at the end (the calls
set it to one while they run: `_threads.one_thread_blas`). Exits 1 otherwise."""

import sys
import threading

import numpy as np
from threadpoolctl import threadpool_info

import semihard_numba as sn

FUNCTIONS = [getattr(sn, name) for name in sn.__all__ if name.startswith("triplet_")]


def _as_arrays(result):
    return [np.asarray(part) for part in (result if isinstance(result, tuple) else (result,))]


def _blas_threads():
    """{path: thread count} of each OpenBLAS loaded (Numba loads SciPy's when it compiles)."""
    return {
        lib["filepath"]: lib["num_threads"]
        for lib in threadpool_info()
        if lib["internal_api"] == "openblas"
    }


def main(threads=4, calls=10, batch=2048):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(batch // 4), 4)
    x = rng.standard_normal((batch, 32)).astype(np.float32)
    expected = [_as_arrays(function(labels, x, backend="cpu")) for function in FUNCTIONS]
    blas_threads = _blas_threads()
    mismatches = []

    def work(worker):
        for call in range(calls):
            which = (worker + call) % len(FUNCTIONS)  # every thread runs every function
            got = _as_arrays(FUNCTIONS[which](labels, x, backend="cpu"))
            if not all(np.array_equal(g, e) for g, e in zip(got, expected[which])):
                mismatches.append((worker, call, FUNCTIONS[which].__name__))

    pool = [threading.Thread(target=work, args=(worker,)) for worker in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    print(f"{threads} threads x {calls} calls, B = {batch}; OpenBLAS threads {blas_threads}")
    if mismatches:
        print("mismatches:", mismatches)
        sys.exit(1)
    if _blas_threads() != blas_threads:
        print("OpenBLAS's thread count was not given back:", _blas_threads())
        sys.exit(1)


if __name__ == "__main__":
    main(*map(int, sys.argv[1:]))

"""What tests/test_concurrency.py runs in a subprocess, one per threading layer (Numba fixes the
layer at the first parallel launch, so each layer needs a process of its own):

    python tests/concurrent_calls.py LAYER [THREADS CALLS BATCH]

Every rule, the loss and the loss with its gradient, computed first in this thread, then by
THREADS Python threads at once, CALLS times each. Every concurrent result must be bit-identical to
the single-threaded one; the layer that ran is printed. Exits 1 on a mismatch; a layer that is not
thread-safe and unguarded aborts the process (SIGABRT) instead."""

import os
import sys
import threading

os.environ["NUMBA_THREADING_LAYER"] = sys.argv[1]

import numba  # noqa: E402
import numpy as np  # noqa: E402

import semihard_numba as sn  # noqa: E402

FUNCTIONS = [getattr(sn, name) for name in sn.__all__ if name.startswith("triplet_")]


def _as_arrays(result):
    return [np.asarray(part) for part in (result if isinstance(result, tuple) else (result,))]


def main(threads=4, calls=10, batch=2048):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(batch // 4), 4)
    x = rng.standard_normal((batch, 32)).astype(np.float32)
    expected = [_as_arrays(function(labels, x, backend="cpu")) for function in FUNCTIONS]
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
    print(f"layer {numba.threading_layer()}: {threads} threads x {calls} calls, B = {batch}")
    if mismatches:
        print("mismatches:", mismatches)
        sys.exit(1)


if __name__ == "__main__":
    main(*map(int, sys.argv[2:]))

"""The library's own threads: how the "cpu" backend runs a call on several cores.

A call is cut into chunks of anchors. Each chunk makes its own rows of the Gram matrix with a
one-thread BLAS product and runs the compiled kernel over them at once, while they are in cache;
the chunks go to the calling thread and to `threads() - 1` threads of a pool, each taking the next
chunk as it finishes one. So the whole call runs on one set of threads, and idle threads sleep.

Why not Numba's `parallel=True` with NumPy's threaded BLAS beside it: two pools then share the
cores. OpenBLAS's workers spin for about 0.1 s after every product (the library's and the user's),
GNU OpenMP's after every parallel loop, and with a static split of the anchors the thread that
shares its core with a spinner finishes last. In a training loop with the default environment
that made the loss 1.2-3x slower than with the right environment variables (bench/README.md,
"The loss in a loop").

`one_thread_blas()` sets OpenBLAS (NumPy's BLAS) to one thread while at least one call is inside
it, and gives it back its own count when the last one leaves. Other threads' BLAS products during
a call run on one thread too. With another BLAS library (MKL, Accelerate) the chunks' products use
that library's threads.
"""

import ctypes
import itertools
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np

_lock = threading.Lock()
_pool = None  # created at the first parallel call, and again in a forked child
_blas = None  # (get, set) of each OpenBLAS's thread count, found once
_blas_users = 0  # calls inside `one_thread_blas`
_blas_saved = []  # the counts they had before the first of those calls


def _forget_after_fork():
    """A forked child has none of the pool's threads, and none of the calls that were running
    in other threads: OpenBLAS gets back the count those calls had taken from it."""
    global _pool, _lock, _blas_users
    if _blas_users:
        for (_, set_count), count in zip(_blas, _blas_saved):
            set_count(count)
    _pool, _lock, _blas_users = None, threading.Lock(), 0


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_forget_after_fork)


_local = threading.local()


def scratch(shape, dtype):
    """An empty array for the calling thread's chunk, in memory it reuses from chunk to chunk
    and call to call: fresh memory costs a page fault for each page it touches."""
    nbytes = shape[0] * shape[1] * np.dtype(dtype).itemsize
    buffer = getattr(_local, "buffer", None)
    if buffer is None or buffer.size < nbytes:
        buffer = _local.buffer = np.empty(nbytes, np.uint8)
    return buffer[:nbytes].view(dtype).reshape(shape)


def threads():
    """How many threads a call may use: Numba's count for the calling thread
    (NUMBA_NUM_THREADS, or numba.set_num_threads)."""
    return numba.get_num_threads()


def run_chunks(task, n_chunks, n_threads):
    """task(c) for c in range(n_chunks), on n_threads threads: the caller and n_threads - 1 of
    the pool, each taking the next chunk when done with one. Raises the first task's error once
    every thread has stopped."""
    global _pool
    n_threads = min(n_threads, n_chunks)
    if n_threads <= 1:
        for c in range(n_chunks):
            task(c)
        return
    chunks = iter(range(n_chunks))
    take = threading.Lock()

    def work():
        while True:
            with take:
                c = next(chunks, None)
            if c is None:
                return
            task(c)

    with _lock:
        if _pool is None:
            workers = max(1, numba.config.NUMBA_NUM_THREADS - 1)
            _pool = ThreadPoolExecutor(workers, thread_name_prefix="semihard_numba")
        helpers = [_pool.submit(work) for _ in range(n_threads - 1)]
    try:
        work()
    finally:
        with take:  # after an error here, the helpers stop at their next chunk
            for _ in chunks:
                pass
        # a helper still queued behind another call's has nothing left to do: drop it
        errors = [None if helper.cancel() else helper.exception() for helper in helpers]
    for error in errors:
        if error is not None:
            raise error


def _openblas_thread_counts():
    """(get, set) of the thread count of each OpenBLAS loaded in the process (NumPy's among
    them), found by threadpoolctl. Called directly: threadpoolctl's own setter lets only the
    first thread that used it change OpenBLAS, and calls come from any thread. OpenBLAS built
    with OpenMP keeps a count per thread and is left alone, as are other BLAS libraries."""
    from threadpoolctl import threadpool_info

    counts = []
    for library in threadpool_info():
        if library["internal_api"] != "openblas" or library.get("threading_layer") == "openmp":
            continue
        dll = ctypes.CDLL(library["filepath"])
        for prefix, suffix in itertools.product(("", "scipy_"), ("", "64_", "_64")):
            get = getattr(dll, f"{prefix}openblas_get_num_threads{suffix}", None)
            if get is not None:
                counts.append((get, getattr(dll, f"{prefix}openblas_set_num_threads{suffix}")))
                break
    return counts


class one_thread_blas:
    """Context manager: OpenBLAS's products on one thread while any call is inside it."""

    def __enter__(self):
        global _blas, _blas_users, _blas_saved
        with _lock:
            if _blas_users == 0:
                if _blas is None:
                    _blas = _openblas_thread_counts()
                _blas_saved = [get() for get, _ in _blas]
                for _, set_count in _blas:
                    set_count(1)
            _blas_users += 1

    def __exit__(self, *exc):
        global _blas_users
        with _lock:
            _blas_users -= 1
            if _blas_users == 0:
                for (_, set_count), count in zip(_blas, _blas_saved):
                    set_count(count)

"""The library's own threads (`_threads`): every chunk runs once, on several threads, errors
reach the caller, and OpenBLAS runs on one thread inside `one_thread_blas` only."""

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from semihard_numba import _threads


def _numpy_blas_threads():
    """The thread count of NumPy's OpenBLAS (None if NumPy uses another BLAS)."""
    np.ones((64, 64)) @ np.ones((64, 64))  # NumPy's BLAS is loaded
    for lib in threadpool_info():
        if lib["internal_api"] == "openblas" and "numpy" in lib["filepath"]:
            return lib["num_threads"]
    return None


def test_every_chunk_runs_once_on_several_threads():
    done, names = [], set()

    def task(c):
        time.sleep(0.002)  # long enough for the pool's thread to take chunks too
        done.append(c)
        names.add(threading.current_thread().name)

    _threads.run_chunks(task, 37, 2)
    assert sorted(done) == list(range(37))
    assert threading.current_thread().name in names and len(names) == 2


def test_one_thread_runs_every_chunk_itself():
    names = set()
    _threads.run_chunks(lambda c: names.add(threading.current_thread().name), 5, 1)
    assert names == {threading.current_thread().name}


@pytest.mark.parametrize("failing", [0, 36])  # the caller's first chunk / most likely a helper's
def test_an_error_in_a_chunk_reaches_the_caller(failing):
    def task(c):
        time.sleep(0.001)
        if c == failing:
            raise ZeroDivisionError(f"chunk {c}")

    with pytest.raises(ZeroDivisionError, match=f"chunk {failing}"):
        _threads.run_chunks(task, 37, 2)
    done = []
    _threads.run_chunks(done.append, 8, 2)  # the pool still works
    assert sorted(done) == list(range(8))


@pytest.mark.skipif(_numpy_blas_threads() in (None, 1), reason="needs a threaded OpenBLAS")
def test_openblas_runs_on_one_thread_inside_and_gets_its_count_back():
    before = _numpy_blas_threads()
    entered, leave = threading.Event(), threading.Event()

    def other_call():  # a second call, from another thread, overlapping the first
        with _threads.one_thread_blas():
            entered.set()
            leave.wait(10)

    with _threads.one_thread_blas():
        assert _numpy_blas_threads() == 1
        other = threading.Thread(target=other_call)
        other.start()
        entered.wait(10)
    assert _numpy_blas_threads() == 1  # the other call is still inside
    leave.set()
    other.join()
    assert _numpy_blas_threads() == before


@pytest.mark.skipif(_numpy_blas_threads() in (None, 1), reason="needs a threaded OpenBLAS")
def test_a_call_from_another_thread_sets_openblas_too():
    """threadpoolctl's own setter would do nothing here: it lets only its first thread in."""
    before, inside = _numpy_blas_threads(), []

    def call():
        with _threads.one_thread_blas():
            inside.append(_numpy_blas_threads())

    thread = threading.Thread(target=call)
    thread.start()
    thread.join()
    assert inside == [1] and _numpy_blas_threads() == before


FORK_INSIDE_A_CALL = """
import multiprocessing, threading, numpy as np
from threadpoolctl import threadpool_info
from semihard_numba import _threads

def numpy_blas_threads():
    return next(lib["num_threads"] for lib in threadpool_info()
                if lib["internal_api"] == "openblas" and "numpy" in lib["filepath"])

before = numpy_blas_threads()
inside, leave = threading.Event(), threading.Event()

def call():  # a call in another thread, inside one_thread_blas when the process forks
    with _threads.one_thread_blas():
        inside.set()
        leave.wait(60)

thread = threading.Thread(target=call)
thread.start()
inside.wait(60)

def child(queue):
    queue.put(numpy_blas_threads())

context = multiprocessing.get_context("fork")
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
in_child = queue.get(timeout=60)
process.join(60)
leave.set()
thread.join()
assert in_child == before, (in_child, before)
assert numpy_blas_threads() == before
print("ok")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX")
@pytest.mark.skipif(_numpy_blas_threads() in (None, 1), reason="needs a threaded OpenBLAS")
def test_a_child_forked_during_a_call_gets_openblas_back():
    run = subprocess.run(
        [sys.executable, "-c", FORK_INSIDE_A_CALL], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("ok")

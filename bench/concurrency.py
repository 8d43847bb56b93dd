"""Calls from several Python threads at once: ``python -m bench.concurrency``.

Numba's "workqueue" threading layer aborts the process when a second thread enters a parallel
region, so on that layer `_cpu` lets one thread at a time into one. A thread that finds it taken
can wait for it ("wait") or run the kernel's serial twin ("serial twin", what the library does).
Each layer runs in its own process (the layer is fixed at the first parallel region), where
workqueue's two choices alternate round by round: THREADS threads each make CALLS calls of the
semi-hard loss with gradient, and the wall time of the whole run, per call, is printed beside one
thread's back-to-back calls on the same layer.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAYERS = ["omp", "tbb", "workqueue"]


def _wait_for_the_region(serial, parallel, *args):
    from semihard_numba import _cpu

    with _cpu._parallel_region:
        return parallel(*args)


def measure(layer, B, threads, calls, rounds):
    """{choice: {"one thread": ms per call, "threads": ms per call}}, medians over `rounds`.
    On workqueue both choices alternate round by round in this one process, so that they meet
    the same machine."""
    import semihard_numba as sn
    from semihard_numba import _cpu
    from semihard_numba._batches import clustered_batch

    library = _cpu._one_parallel_region_at_a_time
    choices = {"serial twin": library, "wait": _wait_for_the_region}
    if layer != "workqueue":
        choices = {"library": library}
    labels, x = clustered_batch(B, 4, 128)[:2]

    def work():
        for _ in range(calls):
            sn.triplet_semihard_loss_and_grad(labels, x, backend="cpu")

    work()  # compile or load, and choose the layer
    times = {choice: ([], []) for choice in choices}
    for _ in range(rounds):
        for choice, guard in choices.items():
            _cpu._one_parallel_region_at_a_time = guard
            alone, together = times[choice]
            start = time.perf_counter()
            work()
            alone.append((time.perf_counter() - start) / calls)
            pool = [threading.Thread(target=work) for _ in range(threads)]
            start = time.perf_counter()
            for thread in pool:
                thread.start()
            for thread in pool:
                thread.join()
            together.append((time.perf_counter() - start) / (threads * calls))
    return {
        choice: {
            "one thread": 1e3 * statistics.median(alone),
            "threads": 1e3 * statistics.median(together),
        }
        for choice, (alone, together) in times.items()
    }


def _child_env(layer):
    env = {**os.environ, "NUMBA_THREADING_LAYER": layer}
    # pip's tbb puts libtbb in the environment's lib/, which the loader does not search
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [os.path.join(sys.prefix, "lib"), env.get("LD_LIBRARY_PATH")])
    )
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--threads", type=int, default=4)
    parser.add_argument("--calls", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        layer, B = args.child[0], int(args.child[1])
        print(json.dumps(measure(layer, B, args.threads, args.calls, args.rounds)))
        return
    print(
        f"{args.threads} threads x {args.calls} calls of the semi-hard loss and gradient, ms per "
        f"call (medians of {args.rounds} rounds), each layer in its own process"
    )
    print("| layer | a busy region | B | one thread | threads | threads / one |")
    print("|---|---|---:|---:|---:|---:|")
    for B in args.sizes:
        for layer in LAYERS:
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "bench.concurrency",
                    "--child",
                    layer,
                    str(B),
                    "--threads",
                    str(args.threads),
                    "--calls",
                    str(args.calls),
                    "--rounds",
                    str(args.rounds),
                ],
                cwd=ROOT,
                env=_child_env(layer),
                capture_output=True,
                text=True,
            )
            if out.returncode:
                print(f"| {layer} | | {B} | failed: {out.stderr.strip().splitlines()[-1]} |")
                continue
            for choice, ms in json.loads(out.stdout.splitlines()[-1]).items():
                print(
                    f"| {layer} | {choice} | {B} | {ms['one thread']:.1f} | "
                    f"{ms['threads']:.1f} | {ms['threads'] / ms['one thread']:.2f} |"
                )


if __name__ == "__main__":
    main()

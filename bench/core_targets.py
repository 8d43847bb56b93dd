"""The core issue's performance targets for the "cpu" backend: ``python -m bench.core_targets``.

float32, D=128, clustered batches (bench/data.py), all in this process unless said otherwise:

1. time of the loss at B=4096 with 4 per class, and with 2 classes of 2048, as a ratio to
   x @ x.T (NumPy) measured interleaved in the same process: the median over rounds of the
   per-round ratio (each round times x @ x.T, the loss and loss+gradient back to back), so a
   load spike from other processes hits numerator and denominator alike. NumPy runs x @ x.T as a
   syrk plus a mirror copy; the same product as a plain gemm, x @ x.copy().T (how the library
   computes it, `semihard_numba._distances.gram`), is timed in the same rounds and reported too;
2. the gradient's extra cost, (loss_and_grad - loss) / (x @ x.T), same rounds;
3. peak extra memory at B=16384, in a fresh process per case: the resident high-water mark
   (VmHWM, reset through /proc/self/clear_refs) minus the resident size just before the call,
   after a small warm-up call has loaded the compiled kernels. tracemalloc's peak over the same
   call is printed beside it: it sees NumPy's allocations but not those Numba makes inside
   compiled code (Numba's runtime allocates through its own allocator), so RSS is the honest one;
4. first-call time in fresh processes: with an empty NUMBA_CACHE_DIR (cold: compiles and writes
   the cache), again with that directory (warm: loads the cache), and with SEMIHARD_NUMBA_CACHE=0
   (no on-disk cache).

Targets (core issue, "Performance"): loss <= 1.5x x @ x.T with 4 per class, <= 2.5x with 2 classes
of 2048; peak extra memory < 1.5 GiB at B=16384; the gradient adds about one x @ x.T.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from bench.data import clustered_batch  # noqa: E402


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def ratios(batch_size, per_class, rounds, seed=0):
    import semihard_numba

    labels, x = clustered_batch(batch_size, per_class, 128, seed=seed)

    def mm():
        return x @ x.T

    def gemm():
        return x @ x.copy().T

    def loss():
        return semihard_numba.triplet_semihard_loss(labels, x, backend="cpu")

    def grad():
        return semihard_numba.triplet_semihard_loss_and_grad(labels, x, backend="cpu")

    for fn in (mm, gemm, loss, grad, mm, gemm, loss, grad):  # warm-up: kernels, caches, threads
        fn()
    t_mm, t_gemm, t_loss, t_grad = [], [], [], []
    for i in range(rounds):
        order = [(mm, t_mm), (gemm, t_gemm), (loss, t_loss), (grad, t_grad)]
        if i % 2:  # alternate the order within a round as well
            order.reverse()
        for fn, out in order:
            out.append(_timed(fn))
    per_round_loss = [l / m for l, m in zip(t_loss, t_mm)]
    per_round_extra = [(g - l) / m for g, l, m in zip(t_grad, t_loss, t_mm)]
    return {
        "B": batch_size,
        "per_class": per_class,
        "rounds": rounds,
        "matmul_ms": statistics.median(t_mm) * 1e3,
        "gemm_ms": statistics.median(t_gemm) * 1e3,
        "loss_ratio_gemm": statistics.median([l / m for l, m in zip(t_loss, t_gemm)]),
        "grad_extra_ratio_gemm": statistics.median(
            [(g - l) / m for g, l, m in zip(t_grad, t_loss, t_gemm)]
        ),
        "loss_ms": statistics.median(t_loss) * 1e3,
        "loss_and_grad_ms": statistics.median(t_grad) * 1e3,
        "loss_ratio": statistics.median(per_round_loss),
        "loss_ratio_of_medians": statistics.median(t_loss) / statistics.median(t_mm),
        "grad_extra_ratio": statistics.median(per_round_extra),
        "loss_ratio_range": [min(per_round_loss), max(per_round_loss)],
    }


# ---- child processes -------------------------------------------------------------------------


def _child_memory(batch_size, per_class, what):
    import tracemalloc

    import semihard_numba
    from bench._worker import PeakMemory

    fn = {
        "loss": semihard_numba.triplet_semihard_loss,
        "loss_and_grad": semihard_numba.triplet_semihard_loss_and_grad,
    }[what]
    small = clustered_batch(256, min(per_class, 128), 128)
    fn(*small, backend="cpu")  # load/compile the kernels first
    labels, x = clustered_batch(batch_size, per_class, 128)
    peak = PeakMemory()
    peak.reset()
    fn(labels, x, backend="cpu")
    rss_extra = peak.peak_extra()
    tracemalloc.start()
    fn(labels, x, backend="cpu")
    _, traced_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    return {
        "B": batch_size,
        "per_class": per_class,
        "what": what,
        "peak_method": peak.method,
        "rss_peak_extra_bytes": rss_extra,
        "tracemalloc_peak_bytes": traced_peak,
        "input_bytes": x.nbytes,
    }


def _child_first_call():
    t0 = time.perf_counter()
    import semihard_numba

    t_import = time.perf_counter() - t0
    labels, x = clustered_batch(4096, 4, 128)
    labels2, x2 = clustered_batch(4096, 2048, 128)
    out = {"import_s": t_import}
    out["first_loss_s"] = _timed(
        lambda: semihard_numba.triplet_semihard_loss(labels, x, backend="cpu")
    )
    out["first_loss_and_grad_s"] = _timed(
        lambda: semihard_numba.triplet_semihard_loss_and_grad(labels, x, backend="cpu")
    )
    out["first_loss_2_classes_s"] = _timed(
        lambda: semihard_numba.triplet_semihard_loss(labels2, x2, backend="cpu")
    )
    out["first_mine_s"] = _timed(lambda: semihard_numba.mine_semihard(labels, x, backend="cpu"))
    out["second_loss_s"] = _timed(
        lambda: semihard_numba.triplet_semihard_loss(labels, x, backend="cpu")
    )
    return out


def _spawn(args, env_extra=None, timeout=900):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(env_extra or {})
    out = subprocess.run(
        [sys.executable, "-m", "bench.core_targets", "--child", json.dumps(args)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed ({out.returncode}): {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _child_main(spec):
    spec = json.loads(spec)
    if spec["kind"] == "memory":
        result = _child_memory(spec["B"], spec["per_class"], spec["what"])
    else:
        result = _child_first_call()
    print(json.dumps(result))


# ---- report ----------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench.core_targets", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds per timing case")
    p.add_argument("--memory-b", type=int, default=16384)
    p.add_argument(
        "--out", default=os.path.join(HERE, "results"), help="directory for core_targets.json/.md"
    )
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        return _child_main(a.child)
    import numba
    import numpy as np

    import semihard_numba

    load_start = os.getloadavg()
    print(
        f"core targets, semihard_numba {semihard_numba.__version__}, numpy {np.__version__}, "
        f"numba {numba.__version__} ({numba.get_num_threads()} threads); load average {load_start}",
        flush=True,
    )
    res = {
        "versions": {
            "numpy": np.__version__,
            "numba": numba.__version__,
            "semihard_numba": semihard_numba.__version__,
        },
        "numba_threads": numba.get_num_threads(),
        "loadavg_start": list(load_start),
    }
    print("timing B=4096, 4 per class ...", flush=True)
    res["k4"] = ratios(4096, 4, a.rounds)
    print("timing B=4096, 2 classes of 2048 ...", flush=True)
    res["k2048"] = ratios(4096, 2048, a.rounds)
    res["memory"] = []
    for per_class, what in ((4, "loss"), (a.memory_b // 2, "loss"), (4, "loss_and_grad")):
        print(
            f"memory B={a.memory_b}, {per_class} per class, {what} (fresh process) ...", flush=True
        )
        res["memory"].append(
            _spawn({"kind": "memory", "B": a.memory_b, "per_class": per_class, "what": what})
        )
    print("first-call times (fresh processes) ...", flush=True)
    with tempfile.TemporaryDirectory() as cache:
        res["first_call"] = {
            "cold cache (empty NUMBA_CACHE_DIR)": _spawn(
                {"kind": "first"}, {"NUMBA_CACHE_DIR": cache}
            ),
            "warm cache (second process)": _spawn({"kind": "first"}, {"NUMBA_CACHE_DIR": cache}),
            "no cache (SEMIHARD_NUMBA_CACHE=0)": _spawn(
                {"kind": "first"}, {"SEMIHARD_NUMBA_CACHE": "0"}
            ),
        }
    res["loadavg_end"] = list(os.getloadavg())
    text = report(res)
    print()
    print(text)
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "core_targets.json"), "w") as f:
        json.dump(res, f, indent=1)
    with open(os.path.join(a.out, "core_targets.md"), "w") as f:
        f.write(text + "\n")
    print(f"wrote {os.path.relpath(os.path.join(a.out, 'core_targets.md'))} and core_targets.json")
    return res


def report(res):
    def verdict(ok):
        return "met" if ok else "NOT met"

    k4, k2 = res["k4"], res["k2048"]
    lines = [
        f'"cpu" backend, float32, D=128, clustered; {res["numba_threads"]} Numba threads; load '
        f"average {[round(v, 2) for v in res['loadavg_start']]} at start, "
        f"{[round(v, 2) for v in res['loadavg_end']]} at end.",
        "",
        "| target | measured | goal | |",
        "|---|---|---|---|",
        f"| loss, B=4096, 4 per class | {k4['loss_ratio']:.2f}x x @ x.T ({k4['loss_ms']:.0f} ms vs "
        f"{k4['matmul_ms']:.0f} ms; rounds {k4['loss_ratio_range'][0]:.2f}-{k4['loss_ratio_range'][1]:.2f}x) "
        f"| <= 1.5x | {verdict(k4['loss_ratio'] <= 1.5)} |",
        f"| loss, B=4096, 2 classes of 2048 | {k2['loss_ratio']:.2f}x ({k2['loss_ms']:.0f} ms vs "
        f"{k2['matmul_ms']:.0f} ms; rounds {k2['loss_ratio_range'][0]:.2f}-{k2['loss_ratio_range'][1]:.2f}x) "
        f"| <= 2.5x | {verdict(k2['loss_ratio'] <= 2.5)} |",
        f"| gradient's extra cost, 4 per class | {k4['grad_extra_ratio']:.2f}x x @ x.T "
        f"(loss+grad {k4['loss_and_grad_ms']:.0f} ms) | about 1x | |",
        f"| gradient's extra cost, 2 classes | {k2['grad_extra_ratio']:.2f}x x @ x.T "
        f"(loss+grad {k2['loss_and_grad_ms']:.0f} ms) | about 1x | |",
    ]
    lines += [
        "",
        "The same rounds against x @ x.copy().T, the product as a plain gemm (what the loss itself "
        "computes):",
        "",
        "| case | x @ x.T | gemm | loss / gemm | gradient's extra / gemm |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, k in (("4 per class", k4), ("2 classes of 2048", k2)):
        lines.append(
            f"| {name} | {k['matmul_ms']:.0f} ms | {k['gemm_ms']:.0f} ms | "
            f"{k['loss_ratio_gemm']:.2f}x | {k['grad_extra_ratio_gemm']:.2f}x |"
        )
    lines += ["", "| memory | measured | goal | |", "|---|---|---|---|"]
    for m in res["memory"]:
        gib = m["rss_peak_extra_bytes"] / 2**30
        goal = "< 1.5 GiB" if m["what"] == "loss" else ""
        lines.append(
            f"| peak extra memory, {m['what']}, B={m['B']}, {m['per_class']} per class | "
            f"{gib:.2f} GiB RSS (tracemalloc sees {m['tracemalloc_peak_bytes'] / 2**30:.2f} GiB) | "
            f"{goal} | {verdict(gib < 1.5) if goal else ''} |"
        )
    lines += [
        "",
        "First call in a fresh process (B=4096; seconds):",
        "",
        "| cache | import | loss | loss+grad | loss, 2 classes | mine | second loss |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, fc in res["first_call"].items():
        lines.append(
            f"| {name} | {fc['import_s']:.2f} | {fc['first_loss_s']:.2f} | "
            f"{fc['first_loss_and_grad_s']:.2f} | {fc['first_loss_2_classes_s']:.2f} | "
            f"{fc['first_mine_s']:.2f} | {fc['second_loss_s']:.3f} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

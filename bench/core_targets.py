"""The "cpu" backend's performance targets: ``python -m bench.core_targets``.

float32, D=128, clustered batches (`semihard_numba._batches`), in this process unless said:

1. the loss at B=4096 with 4 per class, and with 2 classes of 2048, as a ratio to NumPy's x @ x.T
   measured interleaved in the same rounds (each round times x @ x.T, the gemm x @ x.copy().T, the
   loss and loss+gradient back to back; the median of the per-round ratios), so a load spike hits
   numerator and denominator alike. NumPy runs x @ x.T as a syrk plus a mirror copy; the library
   computes the product as the gemm (`semihard_numba._distances.gram`), reported too;
2. the gradient's extra cost, (loss_and_grad - loss) / (x @ x.T), same rounds;
3. what the kernel's speed-ups buy, same kind of rounds: the post's loop on integer keys against
   the same loop on the float distances (4 per class), the bucket sort against np.argsort in the
   sorted search (2 classes of 2048), and the post's loop against the sorted search over class
   sizes (the semi-hard loss alone; `python -m bench.crossover` measures every rule's threshold,
   `_cpu.SORTED_SEARCH_MIN_POSITIVES`);
4. peak extra memory at B=16384, in a fresh process per case: the resident high-water mark (VmHWM,
   reset through /proc/self/clear_refs) minus the resident size just before the call, after a
   small warm-up call has loaded the compiled kernels (tracemalloc does not see Numba's
   allocations inside compiled code; its figure is printed beside);
5. the first call in fresh processes, at B=256 and B=4096: `import semihard_numba`, then the first
   loss (and loss+gradient, mining, a second loss), with an empty NUMBA_CACHE_DIR (cold: compiles
   and writes the cache), again with that directory (warm) and with SEMIHARD_NUMBA_CACHE=0;
6. blocks of anchors: at B=4096, the automatic block against one pass (block = B) and against
   blocks of 1024 and 256 rows, interleaved; at B=16384 and 65536, 4 per class, in a fresh process
   each, the peak extra memory and the median time of the loss and of loss+gradient (the time
   should grow as B^2: 65536 at most 1.2 x 16 x 16384).

Targets: loss <= 1.5x x @ x.T with 4 per class, <= 2.5x with 2 classes of 2048; gradient's extra
cost <= 1.2x; peak extra memory < 1.5 GiB at B=16384; first loss cold <= 5 s at B=256 and <= 10 s
at B=4096, warm <= 0.5 s; blocks at B=4096 at most 1.05x one pass; at B=65536 peak extra memory
< 2 GiB for the loss and < 2.5 GiB with the gradient, time <= 1.2 x 16 x B=16384's.
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

CLASS_SIZES = (4, 8, 16, 24, 32, 64, 128)  # for the threshold of the sorted search


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved(functions, rounds):
    """{name: [seconds per round]}: every function once per round, the order reversed every other
    round, after two warm-up calls each."""
    for _ in range(2):
        for fn in functions.values():
            fn()
    times = {name: [] for name in functions}
    for i in range(rounds):
        names = list(functions)[:: -1 if i % 2 else 1]
        for name in names:
            times[name].append(_timed(functions[name]))
    return times


def ratios(batch_size, per_class, rounds, seed=0):
    import semihard_numba
    from semihard_numba._batches import clustered_batch

    labels, x = clustered_batch(batch_size, per_class, 128, seed=seed)
    t = interleaved(
        {
            "mm": lambda: x @ x.T,
            "gemm": lambda: x @ x.copy().T,
            "loss": lambda: semihard_numba.triplet_semihard_loss(labels, x, backend="cpu"),
            "grad": lambda: semihard_numba.triplet_semihard_loss_and_grad(labels, x, backend="cpu"),
        },
        rounds,
    )

    def median_ratio(numerator, denominator):
        return statistics.median([n / d for n, d in zip(numerator, denominator)])

    extra = [g - l for g, l in zip(t["grad"], t["loss"])]
    per_round_loss = [l / m for l, m in zip(t["loss"], t["mm"])]
    return {
        "B": batch_size,
        "per_class": per_class,
        "rounds": rounds,
        "matmul_ms": statistics.median(t["mm"]) * 1e3,
        "gemm_ms": statistics.median(t["gemm"]) * 1e3,
        "loss_ms": statistics.median(t["loss"]) * 1e3,
        "loss_and_grad_ms": statistics.median(t["grad"]) * 1e3,
        "loss_ratio": statistics.median(per_round_loss),
        "loss_ratio_range": [min(per_round_loss), max(per_round_loss)],
        "grad_extra_ratio": median_ratio(extra, t["mm"]),
        "loss_ratio_gemm": median_ratio(t["loss"], t["gemm"]),
        "grad_extra_ratio_gemm": median_ratio(extra, t["gemm"]),
    }


def search_variants(rounds):
    """Medians in ms of the "cpu" loss with and without each speed-up, at B=4096."""
    from semihard_numba import _cpu
    from semihard_numba._batches import clustered_batch
    from semihard_numba._inputs import host_batch
    from semihard_numba._rules import SEMIHARD, Rule

    def batch(per_class):
        return host_batch(*clustered_batch(4096, per_class, 128), 1.0, "L2")

    def loss(b, **speed_ups):  # the semi-hard loss, the kernel's speed-ups switched
        return _cpu.evaluate(b, Rule(SEMIHARD), False, **speed_ups)

    never = 10**9  # sorted_search_min_positives: the post's loop for every anchor
    small, large = batch(4), batch(2048)
    variants = {
        "4 per class: post's loop, integer keys": lambda: loss(small),
        "4 per class: post's loop, float distances": lambda: loss(small, integer_keys=False),
        "2 classes: sorted search, bucket sort": lambda: loss(large),
        "2 classes: sorted search, np.argsort": lambda: loss(large, bucket_max=0),
    }
    times = interleaved(variants, rounds)
    out = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    start = time.perf_counter()
    loss(large, sorted_search_min_positives=never)  # O(P N) per anchor: one call says enough
    out["2 classes: post's loop alone (one call)"] = (time.perf_counter() - start) * 1e3
    crossover = []
    for per_class in CLASS_SIZES:
        b = batch(per_class)
        t = interleaved(
            {
                "post": lambda: loss(b, sorted_search_min_positives=never),
                "sorted": lambda: loss(b, sorted_search_min_positives=0),
            },
            max(3, rounds // 3),
        )
        crossover.append(
            {
                "per_class": per_class,
                "post_ms": statistics.median(t["post"]) * 1e3,
                "sorted_ms": statistics.median(t["sorted"]) * 1e3,
            }
        )
    return {"variants": out, "crossover": crossover}


def block_costs(rounds):
    """At B=4096, 4 per class: the median per-round ratio of each block size's time to one pass
    (block = B), for the loss and loss+gradient; "automatic" is the default block."""
    from semihard_numba import _cpu
    from semihard_numba._batches import clustered_batch
    from semihard_numba._distances import block_rows
    from semihard_numba._inputs import host_batch
    from semihard_numba._rules import SEMIHARD, Rule

    b = host_batch(*clustered_batch(4096, 4, 128), 1.0, "L2")
    automatic = block_rows(4096, 4)
    sizes = {"one pass": 4096, f"automatic ({min(automatic, 4096)} rows)": None}
    sizes.update({"1024 rows": 1024, "256 rows": 256})
    out = {}
    for want_grad in (False, True):
        variants = {
            name: (
                lambda rows=rows: _cpu.evaluate(b, Rule(SEMIHARD), want_grad, rows_per_block=rows)
            )
            for name, rows in sizes.items()
        }
        times = interleaved(variants, rounds)
        one_pass = times["one pass"]
        out["loss+grad" if want_grad else "loss"] = {
            name: {
                "ms": statistics.median(t) * 1e3,
                "ratio": statistics.median([a / o for a, o in zip(t, one_pass)]),
            }
            for name, t in times.items()
        }
    return out


# ---- child processes -------------------------------------------------------------------------


def _child_memory(batch_size, per_class, what):
    import tracemalloc

    import semihard_numba
    from bench._worker import PeakMemory
    from semihard_numba._batches import clustered_batch

    fn = {
        "loss": semihard_numba.triplet_semihard_loss,
        "loss_and_grad": semihard_numba.triplet_semihard_loss_and_grad,
    }[what]
    fn(*clustered_batch(2048, min(per_class, 1024), 128), backend="cpu")  # load the kernels
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
    }


def _child_large(batch_size, what, repeats):
    """Peak extra memory of the first call (kernels already loaded) and the median time of
    `repeats` more calls, at 4 per class."""
    import semihard_numba
    from bench._worker import PeakMemory
    from semihard_numba._batches import clustered_batch

    fn = {
        "loss": semihard_numba.triplet_semihard_loss,
        "loss_and_grad": semihard_numba.triplet_semihard_loss_and_grad,
    }[what]
    fn(*clustered_batch(2048, 4, 128), backend="cpu")  # load the kernels
    labels, x = clustered_batch(batch_size, 4, 128)
    peak = PeakMemory()
    peak.reset()
    fn(labels, x, backend="cpu")
    extra = peak.peak_extra()
    times = [_timed(lambda: fn(labels, x, backend="cpu")) for _ in range(repeats)]
    return {"B": batch_size, "what": what, "peak_extra_bytes": extra, "times_s": times}


def _child_first_call(batch_size):
    t0 = time.perf_counter()
    import semihard_numba

    out = {"import_s": time.perf_counter() - t0}
    from semihard_numba._batches import clustered_batch

    labels, x = clustered_batch(batch_size, 4, 128)
    out["loss_s"] = _timed(lambda: semihard_numba.triplet_semihard_loss(labels, x, backend="cpu"))
    out["loss_and_grad_s"] = _timed(
        lambda: semihard_numba.triplet_semihard_loss_and_grad(labels, x, backend="cpu")
    )
    out["mine_s"] = _timed(lambda: semihard_numba.mine_semihard(labels, x, backend="cpu"))
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
    elif spec["kind"] == "large":
        result = _child_large(spec["B"], spec["what"], spec["repeats"])
    else:
        result = _child_first_call(spec["B"])
    print(json.dumps(result))


def first_calls():
    """{B: {cache: child result}}, every B with its own empty cache directory."""
    out = {}
    for batch_size in (256, 4096):
        spec = {"kind": "first", "B": batch_size}
        with tempfile.TemporaryDirectory() as cache:
            out[batch_size] = {
                "cold cache (empty NUMBA_CACHE_DIR)": _spawn(spec, {"NUMBA_CACHE_DIR": cache}),
                "warm cache (second process)": _spawn(spec, {"NUMBA_CACHE_DIR": cache}),
                "no cache (SEMIHARD_NUMBA_CACHE=0)": _spawn(spec, {"SEMIHARD_NUMBA_CACHE": "0"}),
            }
    return out


# ---- report ----------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench.core_targets", description=__doc__.split("\n\n")[0]
    )
    p.add_argument("--rounds", type=int, default=9, help="interleaved rounds per timing case")
    p.add_argument("--memory-b", type=int, default=16384)
    p.add_argument(
        "--large-b",
        type=int,
        nargs=2,
        default=[16384, 65536],
        help="the two batch sizes of the blocks' scaling (memory and time, fresh processes)",
    )
    p.add_argument("--large-repeats", type=int, default=3, help="timed calls per large batch")
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
    print("timing the searches' variants ...", flush=True)
    res["search"] = search_variants(a.rounds)
    res["memory"] = []
    for per_class, what in ((4, "loss"), (a.memory_b // 2, "loss"), (4, "loss_and_grad")):
        print(
            f"memory B={a.memory_b}, {per_class} per class, {what} (fresh process) ...", flush=True
        )
        res["memory"].append(
            _spawn({"kind": "memory", "B": a.memory_b, "per_class": per_class, "what": what})
        )
    print("first-call times (fresh processes) ...", flush=True)
    res["first_call"] = first_calls()
    print("blocks at B=4096 ...", flush=True)
    res["blocks"] = block_costs(a.rounds)
    res["large"] = []
    for batch_size in a.large_b:
        for what in ("loss", "loss_and_grad"):
            print(f"B={batch_size}, {what} (fresh process) ...", flush=True)
            spec = {"kind": "large", "B": batch_size, "what": what, "repeats": a.large_repeats}
            res["large"].append(_spawn(spec, timeout=3600))
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
    ]
    for name, k, goal in (("4 per class", k4, 1.5), ("2 classes of 2048", k2, 2.5)):
        lines.append(
            f"| loss, B=4096, {name} | {k['loss_ratio']:.2f}x x @ x.T ({k['loss_ms']:.0f} ms vs "
            f"{k['matmul_ms']:.0f} ms; rounds {k['loss_ratio_range'][0]:.2f}-"
            f"{k['loss_ratio_range'][1]:.2f}x) | <= {goal}x | {verdict(k['loss_ratio'] <= goal)} |"
        )
    for name, k in (("4 per class", k4), ("2 classes", k2)):
        lines.append(
            f"| gradient's extra cost, {name} | {k['grad_extra_ratio']:.2f}x x @ x.T "
            f"(loss+grad {k['loss_and_grad_ms']:.0f} ms) | <= 1.2x | "
            f"{verdict(k['grad_extra_ratio'] <= 1.2)} |"
        )
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
    lines += ["", "What the speed-ups buy (loss, B=4096, median ms):", ""]
    lines += ["| variant | ms |", "|---|---:|"]
    lines += [f"| {name} | {ms:.0f} |" for name, ms in res["search"]["variants"].items()]
    lines += [
        "",
        "The post's loop against the sorted search by class size (loss, B=4096, median ms):",
        "",
        "| per class | post's loop | sorted search |",
        "|---:|---:|---:|",
    ]
    lines += [
        f"| {c['per_class']} | {c['post_ms']:.0f} | {c['sorted_ms']:.0f} |"
        for c in res["search"]["crossover"]
    ]
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
        "First calls in a fresh process, 4 per class (seconds; the loss's first call goal: cold "
        "<= 5 s at B=256 and <= 10 s at B=4096, warm <= 0.5 s):",
        "",
        "| B | cache | import | first loss | then loss+grad | then mine | second loss |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for batch_size, runs in res["first_call"].items():
        for name, fc in runs.items():
            lines.append(
                f"| {batch_size} | {name} | {fc['import_s']:.2f} | {fc['loss_s']:.2f} | "
                f"{fc['loss_and_grad_s']:.2f} | {fc['mine_s']:.2f} | {fc['second_loss_s']:.3f} |"
            )
    lines += [
        "",
        "Blocks of anchors at B=4096, 4 per class: median ms, and the median per-round ratio to "
        "one pass (goal for the automatic block: <= 1.05x):",
        "",
        "| block | loss ms | ratio | loss+grad ms | ratio |",
        "|---|---:|---:|---:|---:|",
    ]
    loss, grad = res["blocks"]["loss"], res["blocks"]["loss+grad"]
    for name in loss:
        lines.append(
            f"| {name} | {loss[name]['ms']:.0f} | {loss[name]['ratio']:.3f} | "
            f"{grad[name]['ms']:.0f} | {grad[name]['ratio']:.3f} |"
        )
    lines += [
        "",
        "Large batches, 4 per class, fresh process each (goals at the largest: loss < 2 GiB, "
        "loss+grad < 2.5 GiB, time <= 1.2 x (B ratio)^2 x the smaller batch's):",
        "",
        "| B | what | peak extra memory | median time | time / smaller B's | goal | |",
        "|---:|---|---:|---:|---:|---|---|",
    ]
    large = {(m["B"], m["what"]): m for m in res["large"]}
    small_b, big_b = sorted({m["B"] for m in res["large"]})
    for (batch_size, what), m in large.items():
        median = statistics.median(m["times_s"])
        gib = m["peak_extra_bytes"] / 2**30
        growth, goal, ok = "", "", None
        if batch_size == big_b:
            smaller = statistics.median(large[(small_b, what)]["times_s"])
            limit = 1.2 * (big_b / small_b) ** 2
            memory_goal = 2.0 if what == "loss" else 2.5
            growth = f"{median / smaller:.1f}x"
            goal = f"<= {limit:.1f}x, < {memory_goal} GiB"
            ok = median / smaller <= limit and gib < memory_goal
        lines.append(
            f"| {batch_size} | {what} | {gib:.2f} GiB | {median:.2f} s | {growth} | {goal} | "
            f"{verdict(ok) if ok is not None else ''} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    main()

"""The benchmark: ``python -m bench`` (``python -m bench --help`` for the options).

Measures one of semihard_numba's triplet losses (--rule; by default triplet_semihard_loss) and its
loss-and-gradient function on the backends "python", "numpy", "cpu", "cuda" (where usable), on
"loop" (the "cpu" kernel without its sorted search: the post's loop, compiled) and "torch" (the
PyTorch module), the installed peers that compute the same rule (TensorFlow Addons,
sentence-transformers, pytorch-metric-learning; see bench/peers.py) and the floor x @ x.T, on
clustered L2-normalised batches of growing size (-k per class, or --classes). Every
(implementation, size) runs in a fresh process (bench/_worker.py): first-call time, the median and
spread of warm calls interleaved with x @ x.T in that same process (the ratio to the floor comes
from there, which keeps it honest on a busy machine), peak extra resident memory, and the loss
checked against "cpu" of the same rule on the same batch.

Sizes an implementation cannot afford are skipped with the reason printed: the memory a size would
need is estimated before it runs (from the implementation's formula where one is known, else
extrapolated from the sizes already measured) and compared with --max-mem-gib, and the time per
call is extrapolated and compared with --max-call-s. A watchdog kills a process that still grows
past the memory budget, so the benchmark is never OOM-killed.
"""

import argparse
import csv
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# "hard-soft" is triplet_hard_loss(soft=True); the others are the library's rule names.
RULES = ("semihard", "hard", "hard-soft", "batch-all", "all-semihard")
RULE_TITLES = {
    "semihard": "semi-hard triplet loss (TFA's)",
    "hard": "batch-hard triplet loss",
    "hard-soft": "batch-hard soft-margin triplet loss",
    "batch-all": "batch-all triplet loss",
    "all-semihard": "all semi-hard triplets (pytorch-metric-learning's)",
}
LIBRARY = ("python", "numpy", "cpu", "loop", "torch", "cuda")
PEERS = ("tfa", "sentence-transformers", "pml")
ALL = ("floor", *LIBRARY, *PEERS)
PEER_MODULES = {
    "tfa": ("tensorflow", "tensorflow_addons"),
    "sentence-transformers": ("torch", "sentence_transformers"),
    "pml": ("torch", "pytorch_metric_learning"),
}
NOTES = {
    "floor": "x @ x.T, the floor",
    "loop": "the post's loop compiled: the cpu kernel without its sorted search",
    "torch": "semihard_numba.torch.TripletLoss on CPU tensors, forward (+ backward)",
}
# (peer, rule) pairs that compute another definition: shown, not compared
DIFFERENT = {
    ("pml", "semihard"): "different definition: all semi-hard triplets, mean over non-zero losses"
}
# Growth exponents used to extrapolate (time, memory) from the last measured size; clamped fits
# from the last two sizes override them where available.
GROWTH = {"python": (3, 2), "numpy": (3, 3), "tfa": (3, 3), "pml": (2.5, 2)}
# Peak bytes per element of the peers' largest intermediates (static_memory_estimate)
ST_BATCH_ALL_BYTES = 24  # measured: 22 at B=256, 2 classes
PML_TRIPLET_BYTES = 84  # measured: 72 at B=256, 2 classes; 81 at B=4096, 4 per class
DEFAULT_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536)
QUICK_SIZES = (32, 64, 128)


def peer_module(impl):
    """bench.peers' name of a peer."""
    return impl.replace("-", "_")


def rule_peers(rule):
    """The peers that compute `rule` (bench/peers.py, CALLS)."""
    from bench.peers import CALLS

    return [p for p in PEERS if rule in CALLS[peer_module(p)]]


def note(impl, rule):
    """What an implementation is, for the tables: the peers' call for the rule."""
    if impl not in PEERS:
        return NOTES.get(impl, "")
    from bench.peers import CALLS

    call = CALLS[peer_module(impl)].get(rule, "")
    return call + (f"; {DIFFERENT[impl, rule]}" if (impl, rule) in DIFFERENT else "")


def per_class(b, args):
    """Samples per class of the batches at size b."""
    return b // args.classes if args.classes else args.k


def static_memory_estimate(impl, b, rule="semihard", k=4, itemsize=4):
    """Bytes an implementation needs at batch size b (k per class) where a formula is known,
    else None (the caller extrapolates from the sizes measured)."""
    hard = rule in ("hard", "hard-soft")
    if impl == "numpy" and not hard:  # "hard" needs (B, B) masks only
        from semihard_numba._numpy import memory_estimate

        return memory_estimate(b, itemsize)
    if impl == "tfa" and rule == "semihard":
        return 18 * b**3  # measured: bench/README.md
    if impl == "sentence-transformers" and rule == "batch-all":
        # pairs x B float tensors (its source, batch_all_triplet_loss): ~ST_BATCH_ALL_BYTES each
        return ST_BATCH_ALL_BYTES * b * (k - 1) * b
    if impl == "pml":
        # every (a, p, n) as three int64 indices and their distances, plus a B^3 mask when
        # B^3 < 2^31 (get_all_triplets_indices); that many classes are what kills it
        return PML_TRIPLET_BYTES * b * (k - 1) * (b - k) + (b**3 if b**3 < 2**31 else 0)
    return None


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 8 * 2**30


def loadavg():
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def machine():
    info = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
    }
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket"):
                info[key.strip()] = value.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/meminfo") as f:
            info["MemTotal GiB"] = round(int(f.readline().split()[1]) / 2**20, 1)
    except OSError:
        pass
    from importlib import metadata

    versions = {}
    for dist in (
        "numpy",
        "numba",
        "llvmlite",
        "semihard-numba",
        "matplotlib",
        "tensorflow-cpu",
        "tensorflow",
        "tensorflow-addons",
        "torch",
        "sentence-transformers",
        "pytorch-metric-learning",
        "cupy",
        "numba-cuda",
    ):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    info["versions"] = versions
    try:
        import numba

        info["numba threads"] = numba.get_num_threads()
    except ImportError:
        pass
    return info


def availability(rule="semihard"):
    """{impl: (usable, reason)} for `rule`, without importing the heavy peers."""
    out = {"floor": (True, "numpy")}
    import semihard_numba

    for name in ("python", "numpy", "cpu", "loop"):
        out[name] = (True, "semihard_numba")
    torch = importlib.util.find_spec("torch") is not None
    out["torch"] = (torch, "semihard_numba.torch" if torch else "not installed: torch")
    usable, reason = semihard_numba.backends()["cuda"]
    out["cuda"] = (bool(usable), reason)
    computes = rule_peers(rule)
    for peer, modules in PEER_MODULES.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        if peer not in computes:
            out[peer] = (False, f"has no {rule} loss (peers for {rule}: {', '.join(computes)})")
        elif missing:
            why = "not installed: " + ", ".join(missing) + " (see bench/README.md, 'Peers')"
            out[peer] = (False, why)
        else:
            out[peer] = (True, "installed")
    return out


def _fit_exponent(points, default):
    """Growth exponent from the last two measured (b, value) points, clamped to [default-1, 3]."""
    if len(points) < 2:
        return default
    (b0, v0), (b1, v1) = points[-2], points[-1]
    if v0 <= 0 or v1 <= 0 or b1 == b0:
        return default
    return min(3.0, max(default - 1.0, math.log(v1 / v0) / math.log(b1 / b0)))


def skip_reason(impl, b, history, args, budget_bytes):
    """Why `impl` is not run at size b, or None. history: list of (b, seconds per call, bytes)."""
    if impl == "python" and b > args.python_max_b:
        return f"readable Python loop: skipped above B={args.python_max_b} (--python-max-b)"
    t_exp, m_exp = GROWTH.get(impl, (2, 2))
    need = static_memory_estimate(impl, b, args.rule, per_class(b, args))
    if history:
        b0, t0, m0 = history[-1]
        m_exp = (
            _fit_exponent([(h[0], h[2]) for h in history if h[2] > 0], m_exp)
            if need is None
            else m_exp
        )
        extrapolated = m0 * (b / b0) ** m_exp
        need = max(need or 0, extrapolated)
        t_exp = _fit_exponent([(h[0], h[1]) for h in history], t_exp)
        t_pred = t0 * (b / b0) ** t_exp
        if t_pred > args.max_call_s:
            return (
                f"estimated {t_pred:.0f} s per call (from {t0:.2f} s at B={b0}, "
                f"~B^{t_exp:.1f}) > --max-call-s {args.max_call_s:g}"
            )
    if need is not None and need > budget_bytes:
        return (
            f"needs ~{need / 2**30:.1f} GiB (estimated before running) > memory budget "
            f"{budget_bytes / 2**30:.1f} GiB (--max-mem-gib)"
        )
    return None


def _child_rss(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def run_child(spec, budget_bytes, timeout_s):
    """Run bench._worker on spec; a watchdog kills it past the memory budget or the timeout."""
    with tempfile.TemporaryDirectory() as tmp:
        spec_path, out_path = os.path.join(tmp, "spec.json"), os.path.join(tmp, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        env = dict(os.environ)
        env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        # Let the "numpy" backend allocate up to the benchmark's budget: its own estimate is
        # checked here first, and the watchdog guards the rest.
        env["SEMIHARD_NUMBA_NUMPY_MAX_BYTES"] = str(int(budget_bytes))
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench._worker", spec_path, out_path],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        start, killed, max_rss = time.monotonic(), None, 0
        while proc.poll() is None:
            rss = _child_rss(proc.pid)
            if rss:
                max_rss = max(max_rss, rss)
                if rss > budget_bytes:
                    proc.kill()
                    killed = (
                        f"killed by the benchmark's watchdog: resident memory "
                        f"{rss / 2**30:.1f} GiB > budget {budget_bytes / 2**30:.1f} GiB"
                    )
            if time.monotonic() - start > timeout_s:
                proc.kill()
                killed = f"killed after --child-timeout {timeout_s:g} s"
            time.sleep(0.02)
        output = proc.stdout.read()
        if killed:
            return {"error": killed}
        try:
            with open(out_path) as f:
                result = json.load(f)
        except (OSError, ValueError):
            tail = output.strip().splitlines()[-3:]
            return {"error": f"worker exited with {proc.returncode}: " + " | ".join(tail)}
        result["wall_s"] = time.monotonic() - start
        result["watchdog_max_rss_bytes"] = max_rss
        return result


def _summary(measure):
    ts = measure["times_s"]
    fl = measure["floor_times_s"]
    med = statistics.median(ts)
    floor_med = statistics.median(fl)
    return {
        "n": len(ts),
        "median_ms": med * 1e3,
        "min_ms": min(ts) * 1e3,
        "max_ms": max(ts) * 1e3,
        "first_call_s": measure["first_s"],
        "floor_median_ms": floor_med * 1e3,
        "ratio_to_floor": med / floor_med if floor_med > 0 else float("nan"),
        "peak_extra_mib": measure["peak_extra_bytes"] / 2**20,
        "peak_first_call_mib": measure.get("peak_first_bytes", 0) / 2**20,
        "peak_warm_call_mib": measure.get("peak_warm_bytes", 0) / 2**20,
    }


def _base_row(impl, b, args):
    return {
        "impl": impl,
        "rule": args.rule,
        "B": b,
        "k": per_class(b, args),
        "D": args.D,
        "classes": b // per_class(b, args),
        "note": note(impl, args.rule),
    }


def rows_from(result, impl, b, args, stats=None):
    """The table rows of one worker's result; `stats`: the batch's, where another process at this
    size computed them (bench.data.batch_statistics, once per size)."""
    base = dict(_base_row(impl, b, args), loadavg=loadavg())
    if "error" in result and "loss" not in result:
        return [dict(base, op="loss", status="error", reason=result["error"])]
    stats = result.get("stats", stats or {})
    rows = []
    for op, key in (("loss", "loss"), ("loss+grad", "grad")):
        if key not in result:
            continue
        row = dict(
            base, op=op, status="ok", reason=result.get("error", ""), **_summary(result[key])
        )
        row.update(stats)
        row["floor_kind"] = result.get("floor_kind", "")
        row["peak_method"] = result.get("peak_method", "")
        value = result[key].get("value")
        row["loss"] = value
        ref = result.get("ref_loss")
        row["cpu_loss"] = ref
        if value is not None and ref is not None:
            diff = abs(value - ref)
            row["abs_diff_vs_cpu"] = diff
            if (impl, args.rule) in DIFFERENT:
                row["agreement"] = "different definition"
            else:
                row["agreement"] = "agrees" if diff <= 1e-5 * abs(ref) + 1e-6 else "DIFFERS"
        if op == "loss+grad" and "grad_rel_diff" in result:
            row["grad_rel_diff_vs_cpu"] = result["grad_rel_diff"]
        rows.append(row)
    return rows


COLUMNS = [
    "impl",
    "rule",
    "op",
    "B",
    "k",
    "D",
    "classes",
    "status",
    "n",
    "median_ms",
    "min_ms",
    "max_ms",
    "first_call_s",
    "floor_median_ms",
    "ratio_to_floor",
    "peak_extra_mib",
    "peak_first_call_mib",
    "peak_warm_call_mib",
    "loss",
    "cpu_loss",
    "abs_diff_vs_cpu",
    "agreement",
    "grad_rel_diff_vs_cpu",
    "semihard_frac",
    "active_frac",
    "hard_frac",
    "floor_kind",
    "peak_method",
    "loadavg",
    "note",
    "reason",
]


def results_name(args):
    """results.* for the default rule and batches, else results-<rule>[-<N>classes].*, so that one
    run never overwrites another's."""
    if args.rule == "semihard" and not args.classes:
        return "results"
    return f"results-{args.rule}" + (f"-{args.classes}classes" if args.classes else "")


def write_outputs(rows, meta, out_dir, plot=True, name="results"):
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    csv_path = os.path.join(out_dir, f"{name}.csv")
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {k: (json.dumps(v) if isinstance(v, list) else v) for k, v in row.items()}
            )
    paths.append(csv_path)
    json_path = os.path.join(out_dir, f"{name}.json")
    with open(json_path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    paths.append(json_path)
    return paths + render(rows, meta, out_dir, plot, name)


def render(rows, meta, out_dir, plot=True, name="results"):
    """NAME.md and NAME.png from the rows (also: python -m bench --render NAME.json)."""
    paths = []
    md_path = os.path.join(out_dir, f"{name}.md")
    with open(md_path, "w") as f:
        f.write(markdown(rows, meta))
    paths.append(md_path)
    if plot:
        png = plot_png(rows, meta, os.path.join(out_dir, f"{name}.png"))
        if png:
            paths.append(png)
    return paths


def _fmt_ms(v):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def _label(impl, rule):
    return impl + (" *" if (impl, rule) in DIFFERENT else "")


def pivot_table(rows, op, rule="semihard"):
    """impl x B: median ms (x floor); skipped sizes as '-'."""
    sizes = sorted({r["B"] for r in rows if r.get("B") is not None})
    impls = [i for i in ALL if any(r["impl"] == i and r.get("B") is not None for r in rows)]
    lines = [
        "| implementation | " + " | ".join(f"B={b}" for b in sizes) + " |",
        "|---|" + "---:|" * len(sizes),
    ]
    for impl in impls:
        if impl == "floor" and op != "loss":
            continue
        cells = []
        for b in sizes:
            match = [
                r
                for r in rows
                if r["impl"] == impl and r["B"] == b and (r["op"] == op or r["status"] != "ok")
            ]
            if not match:
                cells.append("")
                continue
            r = match[0]
            if r["status"] == "ok":
                cell = _fmt_ms(r["median_ms"])
                if impl != "floor":
                    cell += f" ({_fmt_ms(r['ratio_to_floor'])}x)"
                if r.get("agreement") == "DIFFERS":
                    cell += " DIFFERS"
            else:
                cell = "skip" if r["status"] == "skipped" else r["status"]
            cells.append(cell)
        lines.append(f"| {_label(impl, rule)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def batch_shape(args):
    """How the batches are made, in words (args: the namespace or its dict in results.json)."""
    args = args if isinstance(args, dict) else vars(args)
    if args.get("classes"):
        return f"{args['classes']} classes of B/{args['classes']}"
    return f"{args['k']} per class"


def markdown(rows, meta):
    args = meta["args"]
    rule = args.get("rule", "semihard")
    ok = [r for r in rows if r["status"] == "ok"]
    floors = {}  # floor kind -> the smallest B it was used at
    for r in ok:
        if r.get("floor_kind"):
            floors[r["floor_kind"]] = min(r["B"], floors.get(r["floor_kind"], r["B"]))
    out = [
        f"{RULE_TITLES[rule]}. Batches: {batch_shape(args)}, D={args['D']}, noise "
        f"{args['noise']}, margin {args['margin']}, float32, L2; medians of up to "
        f"{args['repeats']} warm calls; '(Nx)' = time / x @ x.T measured interleaved in the same "
        f"process. Load average at start {meta['loadavg_start']}, "
        f"at end {meta.get('loadavg_end')}.",
    ]
    calls = [
        f"{i}: {note(i, rule)}"
        for i in ("loop", "torch", *PEERS)
        if any(r["impl"] == i for r in ok)
    ]
    if calls:
        out.append("Implementations: " + "; ".join(calls) + ".")
    if len(floors) > 1:
        out.append(
            "The floor: "
            + "; ".join(
                f"{kind} from B={b}" for kind, b in sorted(floors.items(), key=lambda f: f[1])
            )
            + " (ratios across that change compare with a different product)."
        )
    out += [
        "",
        "Loss, median ms (ratio to x @ x.T):",
        "",
        pivot_table(rows, "loss", rule),
        "",
        "Loss and gradient, median ms (ratio to x @ x.T):",
        "",
        pivot_table(rows, "loss+grad", rule),
        "",
    ]
    different = sorted({r["impl"] for r in rows if (r["impl"], rule) in DIFFERENT})
    out += [f"\\* {i}: {DIFFERENT[i, rule]}; its value is shown, not compared." for i in different]
    out += [
        "",
        "Details:",
        "",
        "| impl | op | B | n | median ms | min-max ms | x floor | first call s | peak extra MiB "
        "| loss | cpu loss | agreement | grad rel diff | semi-hard found | hard negatives |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in ok:

        def g(key, fmt):
            v = r.get(key)
            return "" if v is None else format(v, fmt)

        out.append(
            f"| {r['impl']} | {r['op']} | {r['B']} | {r['n']} | {_fmt_ms(r['median_ms'])} | "
            f"{_fmt_ms(r['min_ms'])}-{_fmt_ms(r['max_ms'])} | {r['ratio_to_floor']:.3g} | "
            f"{r['first_call_s']:.3g} | {r['peak_extra_mib']:.0f} | {g('loss', '.7g')} | "
            f"{g('cpu_loss', '.7g')} | {r.get('agreement', '')} "
            f"{g('abs_diff_vs_cpu', '.1e')} | {g('grad_rel_diff_vs_cpu', '.1e')} | "
            f"{g('semihard_frac', '.3f')} | {g('hard_frac', '.3f')} |"
        )
    skipped = [r for r in rows if r["status"] != "ok"]
    if skipped:
        out += ["", "Skipped or failed:", ""]
        out += [
            f"- {r['impl']}"
            + (f" B={r['B']}" if r.get("B") else "")
            + f": {r['status']}: {r['reason']}"
            for r in skipped
        ]
    return "\n".join(out) + "\n"


def plot_png(rows, meta, path):
    """Time against B (loss; loss and gradient) and peak extra memory against B, log-log."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'semihard-numba[bench]')")
        return None
    a, m = meta["args"], meta["machine"]
    rule = a.get("rule", "semihard")
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.2))
    axes[1].sharey(axes[0])
    impls = [i for i in ALL if any(r["impl"] == i and r["status"] == "ok" for r in rows)]
    panels = (
        ("loss", "median_ms", 1e-3, "loss"),
        ("loss+grad", "median_ms", 1e-3, "loss + gradient"),
        (None, "peak_extra_mib", 1, "peak extra memory (the larger of loss, loss + gradient)"),
    )
    for ax, (op, key, scale, title) in zip(axes, panels):
        for impl in impls:
            values = {}
            for r in rows:
                if r["impl"] != impl or r["status"] != "ok":
                    continue
                if op is None or r["op"] == op or impl == "floor":
                    values[r["B"]] = max(values.get(r["B"], 0), r[key] * scale)
            pts = sorted((b, v) for b, v in values.items() if v > 0)
            if not pts:
                continue
            style = (
                dict(color="black", linestyle="--")
                if impl == "floor"
                else dict(marker="o", markersize=3)
            )
            label = "x @ x.T (floor)" if impl == "floor" else impl
            if (impl, rule) in DIFFERENT:
                label += " (different definition)"
            ax.plot(*zip(*pts), label=label, **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median time per call (s)")
    axes[2].set_ylabel("peak extra resident memory (MiB)")
    axes[1].legend(fontsize=8, loc="upper left")
    fig.suptitle(
        f"{RULE_TITLES[rule]}, float32, D={a['D']}, {batch_shape(a)} — "
        f"{m.get('Model name', '?')}, {m.get('CPU(s)', m.get('cpus'))} CPUs",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="sizes 32 64 128, 2 repeats, library backends and the floor only (CI)",
    )
    p.add_argument(
        "--rule",
        choices=RULES,
        default="semihard",
        help="the loss: its library functions and the peers that compute it "
        '("hard-soft": triplet_hard_loss with soft=True)',
    )
    p.add_argument("--sizes", type=int, nargs="+", help=f"batch sizes (default {DEFAULT_SIZES})")
    p.add_argument(
        "--impl",
        nargs="+",
        choices=ALL,
        help="implementations (default: all usable; with --quick: floor python numpy cpu)",
    )
    p.add_argument("-k", "--per-class", dest="k", type=int, default=4, help="samples per class")
    p.add_argument(
        "--classes",
        type=int,
        help="N classes of B/N samples each instead of -k per class (N must divide every size)",
    )
    p.add_argument("-D", "--dim", dest="D", type=int, default=128, help="embedding dimension")
    p.add_argument("--noise", type=float, default=1.5, help="noise norm around the class centres")
    p.add_argument("--margin", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, help="warm calls per measurement (default 5; quick 2)")
    p.add_argument(
        "--budget-s",
        type=float,
        default=20.0,
        help="stop repeating once the warm calls of one measurement took this long",
    )
    p.add_argument("--no-grad", action="store_true", help="time the loss only")
    p.add_argument(
        "--max-mem-gib",
        type=float,
        help="memory budget per process (default: half of MemAvailable at start)",
    )
    p.add_argument(
        "--max-call-s",
        type=float,
        default=10.0,
        help="skip a size whose extrapolated time per call exceeds this (60 lets 'cpu' reach "
        "B=65536)",
    )
    p.add_argument(
        "--python-max-b", type=int, default=512, help="largest batch for the readable Python loop"
    )
    p.add_argument("--child-timeout", type=float, default=900.0)
    p.add_argument(
        "--out",
        default=os.path.join(HERE, "results"),
        help="directory for results.csv/.json/.md/.png (results-RULE[-NclassesS].* for another "
        "rule or --classes)",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="only rewrite the .md and .png next to an existing results JSON file",
    )
    p.add_argument(
        "--no-check",
        action="store_true",
        help="skip the loss check against 'cpu' and the batch statistics",
    )
    args = p.parse_args(argv)
    if args.sizes is None:
        args.sizes = list(QUICK_SIZES if args.quick else DEFAULT_SIZES)
    if args.repeats is None:
        args.repeats = 2 if args.quick else 5
    if args.classes is not None:
        bad = [
            b for b in args.sizes if args.classes < 1 or b % args.classes or b < 2 * args.classes
        ]
        if bad:
            p.error(f"--classes {args.classes} must divide every size into classes of >= 2: {bad}")
    return args


def measure(impl, b, args, budget, history, batch_stats, announce=None):
    """Skip or measure one (implementation, size) in a fresh process: (its rows, a line saying
    what happened). history[impl] gets the size's (b, seconds per call, peak bytes) for the
    extrapolations at the next size; batch_stats[b] the batch statistics, computed once a size.
    announce() is called before a process starts."""
    reason = skip_reason(impl, b, history, args, budget)
    if reason:
        row = dict(_base_row(impl, b, args), op="loss", status="skipped", reason=reason)
        return [row], f"skipped: {reason}"
    if announce:
        announce()
    spec = {
        "impl": impl,
        "rule": args.rule,
        "B": b,
        "k": args.k,
        "classes": args.classes,
        "D": args.D,
        "noise": args.noise,
        "seed": args.seed + b,
        "margin": args.margin,
        "repeats": args.repeats,
        "budget_s": args.budget_s,
        "budget_bytes": budget,
        "grad": not args.no_grad,
        "check": not args.no_check,
        "stats": not args.no_check and b not in batch_stats,
    }
    result = run_child(spec, budget, args.child_timeout)
    if "stats" in result:
        batch_stats[b] = result["stats"]
    new = rows_from(result, impl, b, args, batch_stats.get(b))
    ok = [r for r in new if r["status"] == "ok"]
    if not ok:
        # A failure by memory or time stops that implementation at larger sizes too.
        history.append((b, float("inf"), float("inf")))
        return new, f"FAILED: {new[0]['reason']}"
    per_call = max(r["median_ms"] for r in ok) / 1e3
    peak = max(r["peak_extra_mib"] for r in ok) * 2**20
    history.append((b, per_call, peak))
    parts = [
        f"{r['op']} {_fmt_ms(r['median_ms'])} ms ({_fmt_ms(r['ratio_to_floor'])}x)"
        for r in ok
        if impl != "floor" or r["op"] == "loss"
    ]
    r0 = ok[0]
    check = r0.get("agreement", "")
    if check:
        check = f"  {check} ({r0['abs_diff_vs_cpu']:.1e})"
    line = (
        f"{'; '.join(parts)}; first call {r0['first_call_s']:.3g} s; "
        f"peak +{peak / 2**20:.0f} MiB{check}"
    )
    if r0.get("reason"):
        line += f"\n        note: {r0['reason']}"
    return new, line


def main(argv=None):
    args = parse_args(argv)
    if args.render:
        with open(args.render) as f:
            data = json.load(f)
        paths = render(
            data["rows"],
            data["meta"],
            os.path.dirname(os.path.abspath(args.render)),
            plot=not args.no_plot,
            name=os.path.splitext(os.path.basename(args.render))[0],
        )
        print(markdown(data["rows"], data["meta"]))
        print("wrote " + ", ".join(os.path.relpath(p) for p in paths))
        return data["rows"]
    t_start = time.monotonic()
    budget = args.max_mem_gib * 2**30 if args.max_mem_gib else mem_available() / 2
    avail = availability(args.rule)
    if args.impl:
        impls = [i for i in ALL if i in args.impl]
    elif args.quick:
        impls = ["floor", "python", "numpy", "cpu"]
    else:
        impls = ["floor", *LIBRARY, *rule_peers(args.rule)]
    meta = {
        "args": vars(args),
        "machine": machine(),
        "loadavg_start": loadavg(),
        "memory_budget_gib": round(budget / 2**30, 2),
        "availability": avail,
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(
        f"{RULE_TITLES[args.rule]} benchmark: sizes {args.sizes}, {batch_shape(args)}, "
        f"D={args.D}, {args.repeats} repeats; memory budget {budget / 2**30:.1f} GiB; "
        f"load average {meta['loadavg_start']}"
    )
    m = meta["machine"]
    print(
        f"machine: {m.get('Model name', '?')}, {m.get('CPU(s)', m['cpus'])} CPUs, "
        f"{m.get('MemTotal GiB', '?')} GiB; "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    )
    rows = []
    for impl in impls:
        usable, why = avail[impl]
        print(f"  {impl:22s} {'yes' if usable else 'no '}  {why}")
        if not usable:
            rows.append(
                {
                    "impl": impl,
                    "rule": args.rule,
                    "op": "loss",
                    "B": None,
                    "status": "unavailable",
                    "reason": why,
                    "note": note(impl, args.rule),
                }
            )
    impls = [i for i in impls if avail[i][0]]
    total = len(impls) * len(args.sizes)
    history = {impl: [] for impl in impls}
    batch_stats = {}
    done = 0
    tty = sys.stdout.isatty()
    for b in args.sizes:
        # Interleave: the order of implementations rotates from one size to the next.
        shift = args.sizes.index(b) % max(1, len(impls))
        for impl in impls[shift:] + impls[:shift]:
            done += 1
            prefix = f"[{done:3d}/{total}] {time.monotonic() - t_start:6.0f}s  {impl:22s} B={b:6d}"

            def announce():
                print(f"{prefix}  ...", end="" if tty else "\n", flush=True)

            new, line = measure(impl, b, args, budget, history[impl], batch_stats, announce)
            rows += new
            started = new[0]["status"] != "skipped"
            lead = ("\r" + prefix if tty else "        ->") if started else prefix
            print(f"{lead}  {line}", flush=True)
    meta["loadavg_end"] = loadavg()
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    paths = write_outputs(rows, meta, args.out, plot=not args.no_plot, name=results_name(args))
    print()
    print(markdown(rows, meta).split("\nDetails:")[0])
    print(f"load average at end {meta['loadavg_end']}; {meta['elapsed_s']} s in all")
    print("wrote " + ", ".join(os.path.relpath(p) for p in paths))
    return rows


if __name__ == "__main__":
    main()

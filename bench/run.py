"""The benchmark: ``python -m bench`` (``python -m bench --help`` for the options).

Measures semihard_numba's triplet_semihard_loss (and triplet_semihard_loss_and_grad) on the backends
"python", "numpy", "cpu", "cuda" (where usable), the installed peers (TensorFlow Addons,
sentence-transformers, pytorch-metric-learning; see bench/peers.py) and the floor x @ x.T, on
clustered L2-normalised batches of growing size. Every (implementation, size) runs in a fresh
process (bench/_worker.py): first-call time, the median and spread of warm calls interleaved with
x @ x.T in that same process (the ratio to the floor comes from there, which keeps it honest on a
busy machine), peak extra resident memory, and the loss checked against "cpu" on the same batch.

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

LIBRARY = ("python", "numpy", "cpu", "cuda")
PEERS = ("tfa", "sentence-transformers", "pml")
ALL = ("floor", *LIBRARY, *PEERS)
PEER_MODULES = {
    "tfa": ("tensorflow", "tensorflow_addons"),
    "sentence-transformers": ("torch", "sentence_transformers"),
    "pml": ("torch", "pytorch_metric_learning"),
}
NOTES = {
    "pml": "different definition: all semi-hard triplets, mean over non-zero losses",
    "floor": "x @ x.T, the floor",
}
# Growth exponents used to extrapolate (time, memory) from the last measured size; clamped fits
# from the last two sizes override them where available.
GROWTH = {"python": (3, 2), "numpy": (3, 3), "tfa": (3, 3), "pml": (2.5, 2)}
DEFAULT_SIZES = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)
QUICK_SIZES = (32, 64, 128)


def static_memory_estimate(impl, b, itemsize=4):
    """Bytes an implementation needs at batch size b where a formula is known, else None."""
    if impl == "numpy":
        from semihard_numba._numpy import memory_estimate

        return memory_estimate(b, itemsize)
    if impl == "tfa":
        return 18 * b**3  # measured: bench/README.md
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


def availability():
    """{impl: (usable, reason)} without importing the heavy peers."""
    out = {"floor": (True, "numpy")}
    import semihard_numba

    for name in ("python", "numpy", "cpu"):
        out[name] = (True, "semihard_numba")
    usable, reason = semihard_numba.backends()["cuda"]
    out["cuda"] = (bool(usable), reason)
    for peer, modules in PEER_MODULES.items():
        missing = [m for m in modules if importlib.util.find_spec(m) is None]
        out[peer] = (
            not missing,
            "installed"
            if not missing
            else "not installed: " + ", ".join(missing) + " (see bench/README.md, 'Peers')",
        )
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
    need = static_memory_estimate(impl, b)
    if history:
        b0, t0, m0 = history[-1]
        m_exp = (
            _fit_exponent([(h[0], h[2]) for h in history if h[2] > 0], m_exp)
            if static_memory_estimate(impl, b) is None
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


def rows_from(result, impl, b, args):
    base = {
        "impl": impl,
        "B": b,
        "k": args.k,
        "D": args.D,
        "classes": max(1, b // args.k),
        "loadavg": loadavg(),
        "note": NOTES.get(impl, ""),
    }
    if "error" in result and "loss" not in result:
        return [dict(base, op="loss", status="error", reason=result["error"])]
    stats = result.get("stats", {})
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
            if impl == "pml":
                row["agreement"] = "different definition"
            else:
                row["agreement"] = "agrees" if diff <= 1e-5 * abs(ref) + 1e-6 else "DIFFERS"
        if op == "loss+grad" and "grad_rel_diff" in result:
            row["grad_rel_diff_vs_cpu"] = result["grad_rel_diff"]
        rows.append(row)
    return rows


COLUMNS = [
    "impl",
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
    """results.md and results.png from the rows (also: python -m bench --render results.json)."""
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


def pivot_table(rows, op):
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
        label = impl + (" *" if impl == "pml" else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown(rows, meta):
    args = meta["args"]
    out = [
        f"Batches: {args['k']} per class, D={args['D']}, noise {args['noise']}, margin "
        f"{args['margin']}, float32, L2; medians of up to {args['repeats']} warm calls; "
        f"'(Nx)' = time / x @ x.T measured interleaved in the same process. "
        f"Load average at start {meta['loadavg_start']}, at end {meta.get('loadavg_end')}.",
        "",
        "Loss, median ms (ratio to x @ x.T):",
        "",
        pivot_table(rows, "loss"),
        "",
        "Loss and gradient, median ms (ratio to x @ x.T):",
        "",
        pivot_table(rows, "loss+grad"),
        "",
        "\\* pml: different definition (all semi-hard triplets, mean of the non-zero losses); "
        "its value is shown, not compared.",
        "",
        "Details:",
        "",
        "| impl | op | B | n | median ms | min-max ms | x floor | first call s | peak extra MiB "
        "| loss | cpu loss | agreement | grad rel diff | semi-hard found | hard negatives |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        if r["status"] != "ok":
            continue

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
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install 'semihard-numba[bench]')")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.2), sharey=True)
    impls = [i for i in ALL if any(r["impl"] == i and r["status"] == "ok" for r in rows)]
    for ax, op in zip(axes, ("loss", "loss+grad")):
        for impl in impls:
            pts = sorted(
                (r["B"], r["median_ms"] / 1e3)
                for r in rows
                if r["impl"] == impl and r["status"] == "ok" and (r["op"] == op or impl == "floor")
            )
            if not pts:
                continue
            style = (
                dict(color="black", linestyle="--")
                if impl == "floor"
                else dict(marker="o", markersize=3)
            )
            label = {"floor": "x @ x.T (floor)", "pml": "pml (different definition)"}.get(
                impl, impl
            )
            ax.plot(*zip(*pts), label=label, **style)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size B")
        ax.set_title("loss" if op == "loss" else "loss + gradient")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("median time per call (s)")
    axes[1].legend(fontsize=8, loc="upper left")
    a, m = meta["args"], meta["machine"]
    fig.suptitle(
        f"semi-hard triplet loss, float32, D={a['D']}, {a['k']} per class — "
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
    p.add_argument("--sizes", type=int, nargs="+", help=f"batch sizes (default {DEFAULT_SIZES})")
    p.add_argument(
        "--impl",
        nargs="+",
        choices=ALL,
        help="implementations (default: all usable; with --quick: floor python numpy cpu)",
    )
    p.add_argument("-k", "--per-class", dest="k", type=int, default=4, help="samples per class")
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
        help="skip a size whose extrapolated time per call exceeds this",
    )
    p.add_argument(
        "--python-max-b", type=int, default=512, help="largest batch for the readable Python loop"
    )
    p.add_argument("--child-timeout", type=float, default=900.0)
    p.add_argument(
        "--out",
        default=os.path.join(HERE, "results"),
        help="directory for results.csv/.json/.md/.png",
    )
    p.add_argument("--no-plot", action="store_true")
    p.add_argument(
        "--render",
        metavar="RESULTS_JSON",
        help="only rewrite results.md and results.png next to an existing results.json",
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
    return args


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
        )
        print(markdown(data["rows"], data["meta"]))
        print("wrote " + ", ".join(os.path.relpath(p) for p in paths))
        return data["rows"]
    t_start = time.monotonic()
    budget = args.max_mem_gib * 2**30 if args.max_mem_gib else mem_available() / 2
    avail = availability()
    if args.impl:
        impls = [i for i in ALL if i in args.impl]
    elif args.quick:
        impls = ["floor", "python", "numpy", "cpu"]
    else:
        impls = list(ALL)
    meta = {
        "args": vars(args),
        "machine": machine(),
        "loadavg_start": loadavg(),
        "memory_budget_gib": round(budget / 2**30, 2),
        "availability": avail,
        "command": "python -m bench " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(
        f"semi-hard triplet loss benchmark: sizes {args.sizes}, {args.k} per class, D={args.D}, "
        f"{args.repeats} repeats; memory budget {budget / 2**30:.1f} GiB; "
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
                    "op": "loss",
                    "B": None,
                    "status": "unavailable",
                    "reason": why,
                    "note": NOTES.get(impl, ""),
                }
            )
    impls = [i for i in impls if avail[i][0]]
    total = len(impls) * len(args.sizes)
    history = {impl: [] for impl in impls}
    done = 0
    for b in args.sizes:
        # Interleave: the order of implementations rotates from one size to the next.
        shift = args.sizes.index(b) % max(1, len(impls))
        for impl in impls[shift:] + impls[:shift]:
            done += 1
            prefix = f"[{done:3d}/{total}] {time.monotonic() - t_start:6.0f}s  {impl:22s} B={b:6d}"
            reason = skip_reason(impl, b, history[impl], args, budget)
            if reason:
                print(f"{prefix}  skipped: {reason}", flush=True)
                rows.append(
                    {
                        "impl": impl,
                        "op": "loss",
                        "B": b,
                        "k": args.k,
                        "D": args.D,
                        "status": "skipped",
                        "reason": reason,
                        "note": NOTES.get(impl, ""),
                    }
                )
                continue
            tty = sys.stdout.isatty()
            print(f"{prefix}  ...", end="" if tty else "\n", flush=True)
            prefix = "\r" + prefix if tty else "        ->"
            spec = {
                "impl": impl,
                "B": b,
                "k": args.k,
                "D": args.D,
                "noise": args.noise,
                "seed": args.seed + b,
                "margin": args.margin,
                "repeats": args.repeats,
                "budget_s": args.budget_s,
                "grad": not args.no_grad,
                "check": not args.no_check,
                "stats": not args.no_check,
            }
            result = run_child(spec, budget, args.child_timeout)
            new = rows_from(result, impl, b, args)
            rows += new
            ok = [r for r in new if r["status"] == "ok"]
            if not ok:
                print(f"{prefix}  FAILED: {new[0]['reason']}", flush=True)
                # A failure by memory or time stops that implementation at larger sizes too.
                history[impl].append((b, float("inf"), float("inf")))
                continue
            per_call = max(r["median_ms"] for r in ok) / 1e3
            peak = max(r["peak_extra_mib"] for r in ok) * 2**20
            history[impl].append((b, per_call, peak))
            parts = [
                f"{r['op']} {_fmt_ms(r['median_ms'])} ms ({_fmt_ms(r['ratio_to_floor'])}x)"
                for r in ok
                if impl != "floor" or r["op"] == "loss"
            ]
            r0 = ok[0]
            check = r0.get("agreement", "")
            if check:
                check = f"  {check} ({r0['abs_diff_vs_cpu']:.1e})"
            print(
                f"{prefix}  {'; '.join(parts)}; first call {r0['first_call_s']:.3g} s; "
                f"peak +{peak / 2**20:.0f} MiB{check}",
                flush=True,
            )
            if r0.get("reason"):
                print(f"        note: {r0['reason']}")
    meta["loadavg_end"] = loadavg()
    meta["elapsed_s"] = round(time.monotonic() - t_start, 1)
    paths = write_outputs(rows, meta, args.out, plot=not args.no_plot)
    print()
    print(markdown(rows, meta).split("\nDetails:")[0])
    print(f"load average at end {meta['loadavg_end']}; {meta['elapsed_s']} s in all")
    print("wrote " + ", ".join(os.path.relpath(p) for p in paths))
    return rows


if __name__ == "__main__":
    main()

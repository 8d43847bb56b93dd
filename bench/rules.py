"""Every rule against its peers: ``python -m bench.rules`` (``--help`` for the options).

For each rule of ``python -m bench --rule`` and the two batch shapes of the core targets (4 per
class; 2 classes of B/2) at B = 1024 and 4096: "cpu" and the installed peers that compute the
rule, each measurement in a fresh process with the benchmark's own worker, skips and checks
(`bench.run.measure`). Then the PyTorch module ("torch", forward and backward) against
sentence-transformers' BatchSemiHardTripletLoss, 4 per class, at the same sizes. Writes
rules.md (the two tables) and rules.json (every row) into --out.

The cpu rule's time relative to "cpu" on the semi-hard rule of the same batch is what the rules
issue asks to stay within 2x: both come from separate processes, so they carry the machine's
noise; peers that are not installed, or that a size would cost too much, get a row that says so.
"""

import argparse
import json
import os
import time

from bench import run

SHAPES = (None, 2)  # --classes: 4 per class (-k), then 2 classes of B/2
SIZES = (1024, 4096)
IMPLS = ("cpu", "torch", *run.PEERS)
OPS = ("loss", "loss+grad")


def _measure_all(opts, budget):
    """Every (shape, rule, size, implementation) this run asks for, as rows of bench.run."""
    rows, t_start = [], time.monotonic()
    for classes in SHAPES:
        batch_stats = {}  # one batch per (shape, size), whatever the rule
        for rule in run.RULES:
            argv = ["--rule", rule, "--repeats", str(opts.repeats), "--sizes"]
            argv += [str(b) for b in opts.sizes]
            argv += ["--classes", str(classes)] if classes else []
            args = run.parse_args(argv)
            shape = run.batch_shape(args)
            avail = run.availability(rule)
            impls = ["cpu", *run.rule_peers(rule)]
            if rule == "semihard" and not classes:
                impls.append("torch")
            impls = [i for i in impls if i in opts.impl]
            history = {impl: [] for impl in impls}
            for b in opts.sizes:
                for impl in impls:
                    usable, why = avail[impl]
                    if usable:
                        new, line = run.measure(impl, b, args, budget, history[impl], batch_stats)
                    else:
                        new = [dict(run._base_row(impl, b, args), op="loss", status="unavailable")]
                        new[0]["reason"] = line = why
                    for r in new:
                        r["shape"] = shape
                    rows += new
                    when = f"{time.monotonic() - t_start:6.0f}s"
                    print(f"{when}  {rule:12s} {shape:16s} B={b:5d} {impl:22s} {line}", flush=True)
    return rows


def _find(rows, rule, shape, b, impl):
    """{op: row} of one measurement (a skipped or unavailable one under "loss")."""
    return {
        r["op"]: r
        for r in rows
        if (r["rule"], r["shape"], r["B"], r["impl"]) == (rule, shape, b, impl)
    }


def _ms(found):
    """'loss / loss+grad' median ms, or what happened instead."""
    if "loss" not in found:
        return ""
    if found["loss"]["status"] != "ok":
        status = found["loss"]["status"]
        return {"unavailable": "not installed", "skipped": "skipped"}.get(status, "failed")
    return " / ".join(run._fmt_ms(found[op]["median_ms"]) if op in found else "" for op in OPS)


def _ratio(num, den):
    """'a / b' ratios of two measurements' medians, loss then loss+grad."""
    if any(op not in f or f[op]["status"] != "ok" for f in (num, den) for op in OPS):
        return ""
    ratios = [num[op]["median_ms"] / den[op]["median_ms"] for op in OPS]
    return " / ".join(f"{v:.2g}x" if v < 10 else f"{v:.0f}x" for v in ratios)


def _agreement(found):
    if any(op not in found or found[op]["status"] != "ok" for op in OPS):
        return ""
    loss, grad = found["loss"], found["loss+grad"]
    if "agreement" not in loss:
        return ""
    text = f"{loss['agreement']} (loss {loss['abs_diff_vs_cpu']:.0e}"
    if grad.get("grad_rel_diff_vs_cpu") is not None:
        text += f", grad {grad['grad_rel_diff_vs_cpu']:.0e}"
    return text + ")"


def markdown(rows, meta):
    shapes = list(dict.fromkeys(r["shape"] for r in rows))
    sizes = sorted({r["B"] for r in rows})
    out = [
        f"D=128, noise 1.5, margin 1, float32, L2; medians of up to {meta['args']['repeats']} "
        "warm calls, each measurement in its own process; load average at start "
        f"{meta['loadavg_start']}, "
        f"at end {meta['loadavg_end']}. 'cpu ms' and 'peer ms': loss / loss and gradient. "
        "'vs semihard': the cpu time over the cpu time of the semi-hard rule on the same batch "
        "(target <= 2x). 'peer / cpu': how many times longer the peer takes. Agreement: the "
        "absolute difference of the losses, and the largest gradient difference relative to "
        "cpu's largest entry.",
        "",
        "| rule | batch | B | cpu ms | vs semihard | peer | peer ms | peer / cpu | agreement |",
        "|---|---|---:|---:|---:|---|---:|---:|---|",
    ]
    for shape in shapes:
        for b in sizes:
            semihard = _find(rows, "semihard", shape, b, "cpu")
            for rule in run.RULES:
                cpu = _find(rows, rule, shape, b, "cpu")
                peers = [p for p in run.PEERS if _find(rows, rule, shape, b, p)] or [None]
                for peer in peers:
                    found = _find(rows, rule, shape, b, peer) if peer else {}
                    label = run._label(peer, rule) if peer else "-"
                    out.append(
                        f"| {rule} | {shape} | {b} | {_ms(cpu)} | {_ratio(cpu, semihard)} | "
                        f"{label} | {_ms(found)} | {_ratio(found, cpu)} | {_agreement(found)} |"
                    )
    different = sorted({(r["impl"], r["rule"]) for r in rows} & set(run.DIFFERENT))
    if different:
        out.append("")
    out += [f"\\* {run.DIFFERENT[key]}; its value is shown, not compared." for key in different]
    torch_rows = [r for r in rows if r["impl"] == "torch"]
    if torch_rows:
        shape = torch_rows[0]["shape"]
        out += [
            "",
            "The PyTorch module (semihard_numba.torch.TripletLoss('semihard'), forward / forward "
            f"and backward) against sentence-transformers' BatchSemiHardTripletLoss, {shape}:",
            "",
            "| B | torch module ms | sentence-transformers ms | sentence-transformers / "
            "torch | cpu function ms | module agrees with cpu |",
            "|---:|---:|---:|---:|---:|---|",
        ]
        for b in sizes:
            module = _find(rows, "semihard", shape, b, "torch")
            st = _find(rows, "semihard", shape, b, "sentence-transformers")
            cpu = _find(rows, "semihard", shape, b, "cpu")
            out.append(
                f"| {b} | {_ms(module)} | {_ms(st)} | {_ratio(st, module)} | {_ms(cpu)} | "
                f"{_agreement(module)} |"
            )
    skipped = [r for r in rows if r["status"] not in ("ok", "unavailable")]
    if skipped:
        out += ["", "Skipped or failed:", ""]
        out += [
            f"- {r['rule']}, {r['shape']}, B={r['B']}, {r['impl']}: {r['reason']}" for r in skipped
        ]
    return "\n".join(out) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(
        prog="python -m bench.rules",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="batch sizes")
    p.add_argument("--repeats", type=int, default=5, help="warm calls per measurement")
    p.add_argument("--impl", nargs="+", choices=IMPLS, default=list(IMPLS))
    p.add_argument(
        "--max-mem-gib",
        type=float,
        help="memory budget per process (default: half of MemAvailable at start)",
    )
    p.add_argument(
        "--out", default=os.path.join(run.HERE, "results"), help="directory for rules.md/.json"
    )
    opts = p.parse_args(argv)
    budget = opts.max_mem_gib * 2**30 if opts.max_mem_gib else run.mem_available() / 2
    meta = {
        "args": vars(opts),
        "machine": run.machine(),
        "loadavg_start": run.loadavg(),
        "memory_budget_gib": round(budget / 2**30, 2),
    }
    rows = _measure_all(opts, budget)
    meta["loadavg_end"] = run.loadavg()
    text = markdown(rows, meta)
    os.makedirs(opts.out, exist_ok=True)
    with open(os.path.join(opts.out, "rules.json"), "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    with open(os.path.join(opts.out, "rules.md"), "w") as f:
        f.write(text)
    print()
    print(text)
    print(f"wrote {os.path.relpath(opts.out)}/rules.md and rules.json")
    return rows


if __name__ == "__main__":
    main()

"""Where the sorted search starts to pay, per rule: ``python -m bench.crossover``.

An anchor with at least `_cpu.SORTED_SEARCH_MIN_POSITIVES[rule]` positives sorts its negatives once
(`_sorted_search`) instead of running the post's loop for each positive. For each rule that has the
choice ("semihard", "batch-all", "all-semihard"), each batch size and each class size k (k - 1
positives per anchor), float32, D = 128, clustered batches, this times the "cpu" loss with its
gradient (`_cpu.evaluate`; --no-grad: the loss alone) with the sorted search forced off
(sorted_search_min_positives=10**9) and forced on (0). The two run interleaved, the order
reversed every other round, after two warm-up calls each; printed are the medians and the median
of the per-round ratios off / on (above 1: the sorted search is faster), so a load spike on a
shared machine hits both alike.

The suggested threshold of a rule is the positives of the smallest k from which the sorted search
wins at every larger measured k, at every batch size.
"""

import argparse
import json
import os
import statistics
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import machine  # noqa: E402

RULES = ("semihard", "batch-all", "all-semihard")
NEVER, ALWAYS = 10**9, 0  # sorted_search_min_positives: the post's loop / the sorted search


def _timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(rule, batch_size, per_class, rounds, want_grad=True, dim=128):
    """{"off_ms", "on_ms", "ratio"} for one rule and batch shape."""
    from semihard_numba import _cpu
    from semihard_numba._batches import clustered_batch
    from semihard_numba._inputs import host_batch
    from semihard_numba._rules import Rule

    batch = host_batch(*clustered_batch(batch_size, per_class, dim), 1.0, "L2")
    variants = {
        name: lambda s=s: _cpu.evaluate(batch, Rule(rule), want_grad, sorted_search_min_positives=s)
        for name, s in (("off", NEVER), ("on", ALWAYS))
    }
    for _ in range(2):  # compile or load, and warm the caches
        for fn in variants.values():
            fn()
    times = {name: [] for name in variants}
    for i in range(rounds):
        for name in list(variants)[:: -1 if i % 2 else 1]:
            times[name].append(_timed(variants[name]))
    return {
        "off_ms": statistics.median(times["off"]) * 1e3,
        "on_ms": statistics.median(times["on"]) * 1e3,
        "ratio": statistics.median([f / n for f, n in zip(times["off"], times["on"])]),
    }


def suggested(rows):
    """Positives of the smallest k from which "on" wins at every larger measured k, every B."""
    sizes = sorted({row["per_class"] for row in rows})
    wins = {k: all(r["ratio"] > 1 for r in rows if r["per_class"] == k) for k in sizes}
    threshold = None
    for k in reversed(sizes):
        if not wins[k]:
            break
        threshold = k - 1
    return threshold


def table(results):
    lines = [
        "| rule | B | per class | positives | loop ms | sorted ms | loop / sorted |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in results["rows"]:
        lines.append(
            f"| {row['rule']} | {row['B']} | {row['per_class']} | {row['per_class'] - 1} "
            f"| {row['off_ms']:.1f} | {row['on_ms']:.1f} | {row['ratio']:.2f} |"
        )
    lines.append("")
    lines.append("| rule | suggested threshold (positives) | in `_cpu` now |")
    lines.append("|---|---:|---:|")
    for rule, threshold in results["suggested"].items():
        lines.append(f"| {rule} | {threshold} | {results['current'][rule]} |")
    return "\n".join(lines)


def main(argv=None):
    first_line = __doc__.split("\n")[0]
    p = argparse.ArgumentParser(prog="python -m bench.crossover", description=first_line)
    p.add_argument("--rules", nargs="+", default=list(RULES), choices=RULES)
    p.add_argument("--sizes", type=int, nargs="+", default=[1024, 4096])
    p.add_argument("--per-class", type=int, nargs="+", default=[4, 8, 12, 16, 24, 32, 48])
    p.add_argument("--rounds", type=int, default=7, help="timed rounds per case (default 7)")
    p.add_argument("--no-grad", action="store_true", help="time the loss alone")
    p.add_argument("--out", help="also write the results as JSON here")
    a = p.parse_args(argv)

    from semihard_numba import _cpu

    cpu = machine().get("Model name", "?")
    load = tuple(round(x, 2) for x in os.getloadavg())
    print(f"CPU: {cpu}, {os.cpu_count()} logical cores; load average {load}")
    rows = []
    for rule in a.rules:
        for B in a.sizes:
            for k in a.per_class:
                times = measure(rule, B, k, a.rounds, not a.no_grad)
                row = {"rule": rule, "B": B, "per_class": k, **times}
                rows.append(row)
                print(
                    f"{rule:>12} B={B:<5} k={k:<3} loop {row['off_ms']:8.1f} ms  "
                    f"sorted {row['on_ms']:8.1f} ms  loop/sorted {row['ratio']:.2f}",
                    flush=True,
                )
    results = {
        "cpu": cpu,
        "what": "loss" if a.no_grad else "loss and gradient",
        "rounds": a.rounds,
        "rows": rows,
        "suggested": {r: suggested([x for x in rows if x["rule"] == r]) for r in a.rules},
        "current": {r: _cpu.SORTED_SEARCH_MIN_POSITIVES[r][not a.no_grad] for r in a.rules},
    }
    load = tuple(round(x, 2) for x in os.getloadavg())
    print(f"\n{results['what']}; load average at the end {load}\n")
    print(table(results))
    if a.out:
        with open(a.out, "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

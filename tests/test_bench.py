"""Smoke tests of the benchmarks: quick mode (what CI runs), the other rules, --classes, the
"loop" and "torch" implementations, bench.rules and bench.loop on tiny batches; the skip rules and the
blocked floor without running anything large.

Nothing here is about speed."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import types

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import _worker, run  # noqa: E402

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _run(*argv, timeout=300):
    out = subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


@pytest.mark.full  # slow: the full tier (tests/tiers.py)
def test_quick_mode_runs_and_writes_results(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    with open(tmp_path / "results.csv") as f:
        rows = list(csv.DictReader(f))
    measured = {(r["impl"], r["op"], int(r["B"])) for r in rows if r["status"] == "ok"}
    for impl in ("python", "numpy", "cpu"):
        for b in run.QUICK_SIZES:
            assert (impl, "loss", b) in measured
            assert (impl, "loss+grad", b) in measured
    assert ("floor", "loss", 32) in measured
    for r in rows:
        if r["status"] == "ok" and r["impl"] != "floor":
            assert r["agreement"] == "agrees", r
            assert float(r["semihard_frac"]) > 0
    data = json.loads((tmp_path / "results.json").read_text())
    assert data["meta"]["loadavg_start"] is not None
    assert "| cpu |" in (tmp_path / "results.md").read_text()
    if importlib.util.find_spec("matplotlib") is not None:  # the plot is optional
        assert (tmp_path / "results.png").stat().st_size > 0


def _args(**kw):
    base = dict(python_max_b=512, max_call_s=10.0, rule="semihard", k=4, classes=None)
    base.update(kw)
    return types.SimpleNamespace(**base)


def test_skips_are_explained_before_running():
    gib = 2**30
    assert "python" in run.skip_reason("python", 1024, [], _args(), 8 * gib)
    # "numpy" needs O(B^3) memory: refused from its formula, before running anything.
    assert "GiB" in run.skip_reason("numpy", 2048, [], _args(), 8 * gib)
    assert run.skip_reason("numpy", 256, [], _args(), 8 * gib) is None
    assert "GiB" in run.skip_reason("tfa", 1024, [], _args(), 8 * gib)
    # Extrapolated time per call.
    assert "per call" in run.skip_reason(
        "sentence-transformers", 8192, [(4096, 3.0, 1e9)], _args(), 8 * gib
    )
    assert run.skip_reason("cpu", 16384, [(8192, 0.5, 5e8)], _args(), 8 * gib) is None


def test_skips_of_the_large_sizes_and_other_rules():
    gib = 2**30
    cpu = [(16384, 1.5, 1.1 * gib), (32768, 6.0, 1.2 * gib)]
    # B = 65536 for "cpu": past the default time limit, within a raised one (bench/README.md)
    assert "--max-call-s" in run.skip_reason("cpu", 65536, cpu, _args(), 8 * gib)
    assert run.skip_reason("cpu", 65536, cpu, _args(max_call_s=60.0), 8 * gib) is None
    # TFA's hard loss and the numpy backend's "hard" need (B, B) masks only, not B^3
    assert run.skip_reason("tfa", 1024, [], _args(rule="hard"), 8 * gib) is None
    assert run.skip_reason("numpy", 2048, [], _args(rule="hard-soft"), 8 * gib) is None
    assert "GiB" in run.skip_reason("numpy", 2048, [], _args(rule="batch-all"), 8 * gib)
    # every triplet materialised: fine at 4 per class, not with 2 classes of B/2
    for impl, rule in (("sentence-transformers", "batch-all"), ("pml", "all-semihard")):
        assert run.skip_reason(impl, 1024, [], _args(rule=rule), 8 * gib) is None
        assert "GiB" in run.skip_reason(impl, 1024, [], _args(rule=rule, classes=2), 8 * gib)


def test_classes_must_divide_the_sizes():
    assert run.parse_args(["--classes", "2", "--sizes", "64"]).classes == 2
    with pytest.raises(SystemExit):
        run.parse_args(["--classes", "3", "--sizes", "64"])


def test_blocked_floor(monkeypatch):
    """Above a quarter of the memory budget the floor is computed in blocks of rows."""
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    whole = 64 * 64 * 4
    floor, kind = _worker._floor(x, 4 * whole)
    assert kind == "numpy x @ x.T" and floor().shape == (64, 64)
    monkeypatch.setenv("SEMIHARD_NUMBA_BLOCK_BYTES", str(10 * 64 * 4))  # blocks of 10 rows
    floor, kind = _worker._floor(x, 4 * whole - 1)
    assert "blocks of 10 rows" in kind
    last = floor()  # the buffer holds the last block: rows 60 .. 63
    assert last.shape == (10, 64)
    np.testing.assert_allclose(last[:4], (x @ x.T)[60:], rtol=1e-5, atol=1e-5)


def _rows(path):
    with open(path) as f:
        return [r for r in csv.DictReader(f)]


@pytest.mark.full  # slow: the full tier (tests/tiers.py)
def test_other_rule_with_classes(tmp_path):
    """--rule batch-all --classes 2: every implementation agrees with "cpu" of that rule, and the
    results go to their own files. At B = 64, 2 classes of 32, "cpu" takes its sorted search and
    "loop" does not."""
    impls = ["floor", "python", "cpu", "loop"] + (["torch"] if HAS_TORCH else [])
    argv = ["bench", "--rule", "batch-all", "--classes", "2", "--sizes", "32", "64"]
    _run(*argv, "--repeats", "2", "--no-plot", "--out", str(tmp_path), "--impl", *impls)
    assert not (tmp_path / "results.csv").exists()
    rows = _rows(tmp_path / "results-batch-all-2classes.csv")
    measured = {(r["impl"], r["op"], int(r["B"])) for r in rows if r["status"] == "ok"}
    for impl in impls[1:]:
        for b in (32, 64):
            assert {(impl, "loss", b), (impl, "loss+grad", b)} <= measured
    for r in rows:
        assert r["rule"] == "batch-all" and r["classes"] == "2"
        assert int(r["k"]) == int(r["B"]) // 2
        if r["impl"] != "floor":
            assert r["agreement"] == "agrees", r
            assert float(r["loss"]) > 0
            if r["op"] == "loss+grad":
                assert float(r["grad_rel_diff_vs_cpu"]) < 1e-4, r
    # the rule and the batch are the ones asked for: batch-all on 2 classes of 32 (seed 0 + B)
    import semihard_numba
    from bench.data import benchmark_batch

    expected = semihard_numba.triplet_batch_all_loss(*benchmark_batch(64, classes=2, seed=64))
    (value,) = {float(r["cpu_loss"]) for r in rows if r["B"] == "64" and r["impl"] != "floor"}
    assert value == pytest.approx(float(expected), rel=1e-6)
    md = (tmp_path / "results-batch-all-2classes.md").read_text()
    assert md.startswith("batch-all triplet loss. Batches: 2 classes of B/2")
    assert "| loop |" in md


@pytest.mark.full  # slow: the full tier (tests/tiers.py)
def test_hard_soft_and_the_unavailable_peers(tmp_path):
    """--rule hard-soft: TFA's soft hard loss; a peer without that rule is reported, not run."""
    impls = ["cpu", "loop", "pml"] + (["torch"] if HAS_TORCH else [])
    argv = ["bench", "--rule", "hard-soft", "--sizes", "32", "--repeats", "2", "--no-plot"]
    _run(*argv, "--out", str(tmp_path), "--impl", *impls)
    rows = _rows(tmp_path / "results-hard-soft.csv")
    (pml,) = [r for r in rows if r["impl"] == "pml"]
    assert pml["status"] == "unavailable" and "has no hard-soft loss" in pml["reason"]
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["impl"] for r in ok} == set(impls) - {"pml"}
    assert all(r["agreement"] == "agrees" for r in ok)
    # the soft margin is log1p(exp(.)) > 0 for every anchor
    assert len({r["cpu_loss"] for r in ok}) == 1 and float(ok[0]["cpu_loss"]) > 0


@pytest.mark.full  # slow: the full tier (tests/tiers.py)
def test_rules_table(tmp_path):
    """python -m bench.rules on one tiny size: a row for every rule, shape and peer; the peers
    that are not installed say so."""
    _run("bench.rules", "--sizes", "32", "--repeats", "1", "--out", str(tmp_path), timeout=600)
    md = (tmp_path / "rules.md").read_text()
    data = json.loads((tmp_path / "rules.json").read_text())
    table = [line for line in md.splitlines() if line.startswith("| ") and " | 32 | " in line]
    for rule in run.RULES:
        for shape in ("4 per class", "2 classes of B/2"):
            mine = [line for line in table if line.startswith(f"| {rule} | {shape} |")]
            assert len(mine) == len(run.rule_peers(rule)), (rule, shape, mine)
            if rule == "semihard":
                assert all(" | 1x / 1x | " in line for line in mine)
    for peer in run.PEERS:
        installed = all(importlib.util.find_spec(m) for m in run.PEER_MODULES[peer])
        rows = [r for r in data["rows"] if r["impl"] == peer]
        assert rows and all((r["status"] == "unavailable") != installed for r in rows), peer
    assert all(
        r["agreement"] in ("agrees", "different definition")
        for r in data["rows"]
        if r["status"] == "ok"
    )
    cpu = [r for r in data["rows"] if r["impl"] == "cpu" and r["status"] == "ok"]
    assert len(cpu) == 2 * len(run.RULES) * 2  # shapes x rules x (loss, loss+grad)
    if HAS_TORCH:
        assert "The PyTorch module" in md


def test_loop_tables():
    """Two settings, each in a process of its own: a column each, in every table."""
    argv = ["--sizes", "64", "--batches", "4 per class", "--loops", "plain", "numpy"]
    out = _run("bench.loop", *argv, "--settings", "default", "one thread each", "--repeats", "1")
    lines = out.stdout.splitlines()
    assert "| B | part | default | one thread each |" in lines
    parts = {line.split(" | ")[1]: line for line in lines if line.startswith("| 64 |")}
    assert {"gemm", "loss", "loss and gradient", "step", "no-op step"} <= set(parts)
    assert all(line.count(" | ") == 3 and "|  |" not in line for line in parts.values())


def test_crossover_table(tmp_path):
    out = tmp_path / "crossover.json"
    argv = ["--sizes", "32", "--per-class", "2", "16", "--rounds", "1", "--out", str(out)]
    printed = _run("bench.crossover", *argv).stdout
    data = json.loads(out.read_text())
    rules = ["semihard", "batch-all", "all-semihard"]
    assert [(r["rule"], r["per_class"]) for r in data["rows"]] == [
        (rule, k) for rule in rules for k in (2, 16)
    ]
    assert all(r["off_ms"] > 0 and r["on_ms"] > 0 for r in data["rows"])
    assert set(data["suggested"]) == set(rules)
    assert data["suggested"]["semihard"] in (None, 1, 15)  # a measured k - 1, or none
    assert printed.count("| semihard | 32 |") == 2


@pytest.mark.parametrize(
    "module",
    [
        "bench",
        "bench.core_targets",
        "bench.crossover",
        "bench.products",
        "bench.loop",
        "bench.rules",
    ],
)
def test_help(module):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "usage" in out.stdout

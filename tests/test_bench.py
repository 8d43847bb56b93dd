"""Smoke test of the benchmark's quick mode (what CI runs): it runs and writes its results.

Nothing here is about speed."""

import csv
import importlib.util
import json
import os
import subprocess
import sys
import types

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench import run  # noqa: E402


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
    base = dict(python_max_b=512, max_call_s=10.0)
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


@pytest.mark.parametrize("module", ["bench", "bench.core_targets", "bench.products"])
def test_help(module):
    out = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "usage" in out.stdout

"""examples/train_numpy.py: a short run trains, and its hand-written backward pass is right.

Needs the `examples` extra (scikit-learn; matplotlib only for the figure)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest

import semihard_numba

pytest.importorskip("sklearn", reason="the example needs scikit-learn: pip install .[examples]")

_PATH = Path(__file__).resolve().parents[1] / "examples" / "train_numpy.py"
_spec = importlib.util.spec_from_file_location("train_numpy", _PATH)
train_numpy = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(train_numpy)


def test_short_run_lowers_the_loss_and_raises_accuracy(tmp_path, capsys):
    # 30 steps at the default settings; over seeds 0-7 the held-out loss falls from ~0.97 to
    # ~0.85 and the accuracy rises from ~0.88 to ~0.96, so these margins are wide.
    plot = importlib.util.find_spec("matplotlib") is not None
    out = tmp_path / "train.png"
    argv = ["--steps", "30", "--seed", "0", "--out", str(out)] + ([] if plot else ["--no-plot"])
    result = train_numpy.main(argv)

    assert len(result.batch_losses) == 30
    assert result.final_loss < result.initial_loss - 0.05
    assert np.mean(result.batch_losses[-5:]) < np.mean(result.batch_losses[:5])
    assert result.final_accuracy > result.initial_accuracy
    printed = capsys.readouterr().out
    assert "before:" in printed and "after:" in printed
    if plot:
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_grad_W_matches_finite_differences():
    # d loss / d W through the normalisation and the linear map, against central differences.
    rng = np.random.default_rng(1)
    X, labels = rng.normal(size=(12, 5)), np.repeat(np.arange(4), 3)
    W = rng.normal(size=(5, 3))

    def loss(W):
        return float(semihard_numba.triplet_semihard_loss(labels, train_numpy.embed(X, W)[0]))

    E, norms = train_numpy.embed(X, W)
    _, grad_E = semihard_numba.triplet_semihard_loss_and_grad(labels, E)
    analytic = train_numpy.grad_W(X, E, norms, grad_E)
    numeric, h = np.zeros_like(W), 1e-6
    for index in np.ndindex(W.shape):
        step = np.zeros_like(W)
        step[index] = h
        numeric[index] = (loss(W + step) - loss(W - step)) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-7)

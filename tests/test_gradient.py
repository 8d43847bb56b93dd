"""Gradients: against central finite differences, and TFA's exact-tie case against the natural
subgradient (golden case 171, where we deliberately differ from TF)."""

import numpy as np
import pytest

import semihard_numba as sn

import reference
from golden import TF_TIE_LEAK_CASE, semihard_cases

BACKENDS = ["python", "numpy", "cpu"]


def tie_free_batch(seed, B=12, D=5, classes=3):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=B)
    labels[:classes] = np.arange(classes)
    labels[classes : 2 * classes] = np.arange(classes)  # every class has a positive pair
    return labels, rng.standard_normal((B, D))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("seed", range(4))
def test_gradient_matches_central_differences(seed, metric, backend):
    labels, x = tie_free_batch(seed)
    margin = 0.7
    _, grad = sn.triplet_semihard_loss_and_grad(labels, x, margin, metric, backend=backend)
    assert grad.dtype == np.float64
    h = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        up = sn.triplet_semihard_loss(labels, x + step, margin, metric, backend="python")
        down = sn.triplet_semihard_loss(labels, x - step, margin, metric, backend="python")
        numeric[i] = (up - down) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


OTHER_RULES = {  # (loss, loss_and_grad, keyword arguments)
    "hard": (sn.triplet_hard_loss, sn.triplet_hard_loss_and_grad, {}),
    "hard, soft": (sn.triplet_hard_loss, sn.triplet_hard_loss_and_grad, {"soft": True}),
    "batch-all": (sn.triplet_batch_all_loss, sn.triplet_batch_all_loss_and_grad, {}),
    "all-semihard": (sn.triplet_all_semihard_loss, sn.triplet_all_semihard_loss_and_grad, {}),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("rule", sorted(OTHER_RULES))
@pytest.mark.parametrize("seed", range(2))
def test_other_rules_match_central_differences(seed, rule, metric, backend):
    labels, x = tie_free_batch(seed)
    loss_fn, grad_fn, options = OTHER_RULES[rule]
    kwargs = dict(margin=0.7, distance_metric=metric, **options)
    _, grad = grad_fn(labels, x, backend=backend, **kwargs)
    h = 1e-6
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        up = loss_fn(labels, x + step, backend="python", **kwargs)
        down = loss_fn(labels, x - step, backend="python", **kwargs)
        numeric[i] = (up - down) / (2 * h)
    assert np.abs(numeric).max() > 0  # something to compare
    np.testing.assert_allclose(grad, numeric, rtol=1e-5, atol=1e-7)


def test_tie_with_the_farthest_point_gets_the_natural_subgradient():
    case = next(c for c in semihard_cases() if c.case == TF_TIE_LEAK_CASE)
    expected_loss, expected = reference.loss_and_grad_l2(case.labels, case.embeddings, case.margin)
    # TF leaks part of the gradient to the farthest point here; we do not copy that.
    assert not np.allclose(expected, case.grad, rtol=1e-4, atol=1e-6)
    for backend in BACKENDS:
        loss, grad = sn.triplet_semihard_loss_and_grad(
            case.labels, case.embeddings, case.margin, "L2", backend=backend
        )
        np.testing.assert_allclose(loss, expected_loss, rtol=1e-6)
        np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_tied_negatives_share_the_gradient_and_the_hinge_passes_it(backend):
    # 1-D: anchor 0 at 0, positive 1 at 1; negatives 2 and 3 both at 2 (tied, semi-hard).
    labels = np.array([0, 0, 1, 1])
    x = np.array([[0.0], [1.0], [2.0], [-2.0]])
    # margin 1: 1 + 1 - 2 = 0, exactly on the hinge for anchor 0; TF still passes gradient.
    mined = sn.mine_semihard(labels, x, 1.0, backend=backend)
    assert mined.negative[0] == 2 and mined.semihard[0] and mined.loss[0] == 0
    loss, grad = sn.triplet_semihard_loss_and_grad(labels, x, 1.0, backend=backend)
    expected_loss, expected = reference.loss_and_grad_l2(labels, x, 1.0)
    np.testing.assert_allclose(loss, expected_loss)
    np.testing.assert_allclose(grad, expected, atol=1e-12)
    assert grad[3, 0] != 0  # the tied negative at -2 received its share


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_duplicate_points_give_finite_gradients(metric, backend):
    labels = np.array([0, 0, 1, 1, 2])
    x = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    loss, grad = sn.triplet_semihard_loss_and_grad(labels, x, 0.5, metric, backend=backend)
    assert np.isfinite(loss) and np.isfinite(grad).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_positive_pair_gives_zero_loss_and_zero_gradient(backend):
    loss, grad = sn.triplet_semihard_loss_and_grad([0, 1, 2], np.eye(3), backend=backend)
    assert loss == 0.0 and grad.shape == (3, 3) and not grad.any()


def test_callable_metric_has_no_gradient():
    with pytest.raises(TypeError, match="callable metric has no gradient"):
        sn.triplet_semihard_loss_and_grad([0, 0], np.eye(2), distance_metric=lambda x: x @ x.T)

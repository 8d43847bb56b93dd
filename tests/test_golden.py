"""Every backend against the reference implementations themselves (tests/data, see its README):
TensorFlow Addons 0.23.0 for "semihard" and "hard", sentence-transformers 6.2.0 for "batch-all",
pytorch-metric-learning 2.9.0 for "all-semihard"."""

import numpy as np
import pytest

import semihard_numba as sn

import reference
from golden import (
    TF_SOFTPLUS_OVERFLOW_CASES,
    TF_TIE_LEAK_CASE,
    TORCH_ROUNDING_CASES,
    all_semihard_cases,
    batch_all_cases,
    hard_cases,
    semihard_cases,
)
from tiers import golden_sample

SEMIHARD = semihard_cases()
HARD = hard_cases()
VARIANTS = batch_all_cases() + all_semihard_cases()
HOST_BACKENDS = ["python", "numpy", "cpu"]
# what the parametrized tests run: every case in the full tier, a sample in the quick one
SEMIHARD_RUN, HARD_RUN, VARIANTS_RUN = map(golden_sample, (SEMIHARD, HARD, VARIANTS))

LOSS = dict(rtol=1e-5, atol=1e-6)  # the golden files' tolerances for float32
GRAD = dict(rtol=1e-4, atol=1e-6)


def test_golden_files_have_every_case():
    assert len(SEMIHARD) == 59 and len(HARD) == 118 and len(VARIANTS) == 120
    assert (
        {c.metric for c in SEMIHARD} == {c.metric for c in HARD} == {"L2", "squared-L2", "angular"}
    )
    assert any(np.isnan(c.loss) for c in SEMIHARD)
    assert {c.soft for c in HARD} == {False, True}
    assert {c.function for c in VARIANTS} == {"st_batch_all", "pml_semihard"}


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("case", SEMIHARD_RUN, ids=repr)
def test_semihard_loss_matches_tfa(case, backend):
    loss = sn.triplet_semihard_loss(
        case.labels, case.embeddings, case.margin, case.metric, backend=backend
    )
    assert loss.dtype == np.float32
    expected = 0.0 if np.isnan(case.loss) else case.loss  # TFA's NaN (no positive pair) is our 0.0
    np.testing.assert_allclose(loss, expected, **LOSS)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("case", [c for c in SEMIHARD_RUN if c.case != TF_TIE_LEAK_CASE], ids=repr)
def test_semihard_gradient_matches_tensorflow_autodiff(case, backend):
    loss, grad = sn.triplet_semihard_loss_and_grad(
        case.labels, case.embeddings, case.margin, case.metric, backend=backend
    )
    assert grad.dtype == np.float32 and grad.shape == case.embeddings.shape
    if np.isnan(case.loss):
        assert loss == 0.0 and not grad.any()
    else:
        np.testing.assert_allclose(loss, case.loss, **LOSS)
        np.testing.assert_allclose(grad, case.grad, **GRAD)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("case", SEMIHARD_RUN, ids=repr)
def test_mining_reproduces_the_loss(case, backend):
    mined = sn.mine_semihard(
        case.labels, case.embeddings, case.margin, case.metric, backend=backend
    )
    expected = 0.0 if np.isnan(case.loss) else case.loss
    assert len(mined) == sum(
        (case.labels == a).sum() - 1 for a in case.labels
    )  # one entry per ordered positive pair
    mean = mined.loss.astype(np.float64).mean() if len(mined) else 0.0
    np.testing.assert_allclose(mean, expected, **LOSS)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize(
    "case", [c for c in HARD_RUN if c.case not in TF_SOFTPLUS_OVERFLOW_CASES], ids=repr
)
def test_hard_loss_and_gradient_match_tfa(case, backend):
    loss, grad, stats = sn.triplet_hard_loss_and_grad(
        case.labels,
        case.embeddings,
        case.margin,
        case.soft,
        case.metric,
        backend=backend,
        return_stats=True,
    )
    assert loss.dtype == grad.dtype == np.float32
    np.testing.assert_allclose(loss, case.loss, **LOSS)
    np.testing.assert_allclose(grad, case.grad, **GRAD)
    assert stats.denominator == len(case.labels)
    assert loss == sn.triplet_hard_loss(
        case.labels, case.embeddings, case.margin, case.soft, case.metric, backend=backend
    )


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize(
    "case", [c for c in HARD if c.case in TF_SOFTPLUS_OVERFLOW_CASES], ids=repr
)
def test_soft_hard_loss_stays_finite_where_tfa_overflows(case, backend):
    assert np.isinf(case.loss) and np.isnan(case.grad).all()  # what TFA 0.23.0 returns
    loss, grad = sn.triplet_hard_loss_and_grad(
        case.labels, case.embeddings, case.margin, True, case.metric, backend=backend
    )
    expected = reference.hard_loss(case.labels, case.embeddings, case.margin, True, case.metric)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    x = case.embeddings.astype(np.float64)  # central differences of the float64 definition
    h = 1e-6 * np.abs(x).max()
    numeric = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        up = reference.hard_loss(case.labels, x + step, case.margin, True, case.metric)
        down = reference.hard_loss(case.labels, x - step, case.margin, True, case.metric)
        numeric[i] = (up - down) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-3, atol=1e-4 * np.abs(numeric).max())


FUNCTIONS = {
    "st_batch_all": sn.triplet_batch_all_loss_and_grad,
    "pml_semihard": sn.triplet_all_semihard_loss_and_grad,
}
RULES = {"st_batch_all": "batch-all", "pml_semihard": "all-semihard"}


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("case", VARIANTS_RUN, ids=lambda c: f"{c.function}-{c!r}")
def test_batch_all_and_all_semihard_match_their_references(case, backend):
    loss, grad, stats = FUNCTIONS[case.function](
        case.labels, case.embeddings, case.margin, case.metric, backend=backend, return_stats=True
    )
    np.testing.assert_allclose(loss, case.loss, **LOSS)
    assert stats.denominator == case.count  # exactly the references' number of triplets
    scale = max(np.abs(case.grad).max(), np.finfo(np.float32).tiny)  # tolerances relative to it
    if case.case in TORCH_ROUNDING_CASES:
        _, _, expected = reference.every_triplet(
            case.labels, case.embeddings, case.margin, RULES[case.function], case.metric
        )
        assert not np.allclose(case.grad / scale, expected / scale, **GRAD)  # theirs is off here
    else:
        expected = case.grad
    np.testing.assert_allclose(grad / scale, expected / scale, **GRAD)

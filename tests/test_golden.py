"""Every backend against TensorFlow Addons 0.23.0 itself (tests/data, see its README)."""

import numpy as np
import pytest

import semihard_numba as sn

from golden import TF_TIE_LEAK_CASE, semihard_cases

CASES = semihard_cases()
HOST_BACKENDS = ["python", "numpy", "cpu"]


def test_golden_file_has_the_semihard_cases():
    assert len(CASES) == 59
    assert {c.metric for c in CASES} == {"L2", "squared-L2", "angular"}
    assert any(np.isnan(c.loss) for c in CASES)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_loss_matches_tfa(case, backend):
    loss = sn.triplet_semihard_loss(
        case.labels, case.embeddings, case.margin, case.metric, backend=backend
    )
    assert loss.dtype == np.float32
    expected = 0.0 if np.isnan(case.loss) else case.loss  # TFA's NaN (no positive pair) is our 0.0
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("case", [c for c in CASES if c.case != TF_TIE_LEAK_CASE], ids=repr)
def test_gradient_matches_tensorflow_autodiff(case, backend):
    loss, grad = sn.triplet_semihard_loss_and_grad(
        case.labels, case.embeddings, case.margin, case.metric, backend=backend
    )
    assert grad.dtype == np.float32 and grad.shape == case.embeddings.shape
    if np.isnan(case.loss):
        assert loss == 0.0 and not grad.any()
    else:
        np.testing.assert_allclose(loss, case.loss, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(grad, case.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_mining_reproduces_the_loss(case, backend):
    mined = sn.mine_semihard(
        case.labels, case.embeddings, case.margin, case.metric, backend=backend
    )
    expected = 0.0 if np.isnan(case.loss) else case.loss
    assert len(mined) == sum(
        (case.labels == a).sum() - 1 for a in case.labels
    )  # one entry per ordered positive pair
    mean = mined.loss.astype(np.float64).mean() if len(mined) else 0.0
    np.testing.assert_allclose(mean, expected, rtol=1e-5, atol=1e-6)

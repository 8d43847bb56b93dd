"""The golden cases as the framework tests (test_jax.py, test_tensorflow.py, test_keras.py,
test_torch.py) run them: each case's rule, settings and inputs, and the check of a framework's loss and autodiff
gradient against the reference's own numbers (the cases where we deliberately differ are tested
in tests/test_golden.py)."""

import numpy as np
import pytest

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

GOLDEN = {  # rule -> (cases, the cases where we deliberately differ)
    "semihard": (semihard_cases, {TF_TIE_LEAK_CASE}),
    "hard": (hard_cases, TF_SOFTPLUS_OVERFLOW_CASES),
    "batch-all": (batch_all_cases, TORCH_ROUNDING_CASES),
    "all-semihard": (all_semihard_cases, set()),
}


def golden_params():
    """pytest parameters (rule, case) over the tier's sample of every reference's cases."""
    params = []
    for rule, (cases, differ) in GOLDEN.items():
        for case in golden_sample(cases()):
            if case.case not in differ:
                params.append(pytest.param(rule, case, id=f"{rule}-{case!r}"))
    return params


def check_golden(case, loss, grad):
    """The loss and gradient a framework computed for `case`, against the reference's."""
    want = 0.0 if np.isnan(case.loss) else case.loss  # TFA's NaN without pairs is our 0.0
    np.testing.assert_allclose(float(loss), want, rtol=1e-5, atol=1e-6, err_msg=repr(case))
    if not np.isnan(case.loss):
        np.testing.assert_allclose(
            np.asarray(grad), case.grad, rtol=1e-4, atol=1e-6, err_msg=repr(case)
        )


def batch(seed, B=24, D=5, classes=4, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, B), rng.normal(size=(B, D)).astype(dtype)

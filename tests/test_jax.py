"""semihard_numba.jax: the golden cases through jax.value_and_grad, jit, vmap, dtypes (float64
under x64, half precision in float32), one host call per differentiated call, and bad input at
trace time. Collected only where JAX is installed (conftest.py)."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import semihard_numba as sn
import semihard_numba._frameworks as frameworks
import semihard_numba.jax as snj

from framework_cases import batch, check_golden, golden_params

FUNCTIONS = {  # rule -> (JAX function, NumPy function with its gradient, keyword arguments)
    "semihard": (snj.triplet_semihard_loss, sn.triplet_semihard_loss_and_grad, {}),
    "hard": (snj.triplet_hard_loss, sn.triplet_hard_loss_and_grad, {}),
    "hard, soft": (snj.triplet_hard_loss, sn.triplet_hard_loss_and_grad, {"soft": True}),
    "batch-all": (snj.triplet_batch_all_loss, sn.triplet_batch_all_loss_and_grad, {}),
    "all-semihard": (snj.triplet_all_semihard_loss, sn.triplet_all_semihard_loss_and_grad, {}),
}


@pytest.mark.parametrize("rule, case", golden_params())
def test_golden_cases_through_jax_grad(rule, case):
    soft = {"soft": case.soft} if rule == "hard" else {}

    def loss(x):
        return snj.triplet_loss(rule, case.labels, x, case.margin, case.metric, **soft)

    value, grad = jax.value_and_grad(loss)(jnp.asarray(case.embeddings))
    assert value.dtype == jnp.float32 and grad.dtype == jnp.float32
    check_golden(case, value, grad)


@pytest.mark.parametrize("rule", sorted(FUNCTIONS))
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_jit_value_and_grad_match_the_numpy_function(rule, metric):
    function, loss_and_grad, options = FUNCTIONS[rule]
    labels, x = batch(3)
    step = jax.jit(
        jax.value_and_grad(
            lambda x, labels: function(labels, x, 0.7, distance_metric=metric, **options)
        )
    )
    value, grad = step(x, labels)
    want_value, want_grad = loss_and_grad(labels, x, 0.7, distance_metric=metric, **options)
    assert float(value) == pytest.approx(float(want_value), rel=1e-6)
    np.testing.assert_allclose(np.asarray(grad), want_grad, rtol=1e-6, atol=1e-7)
    # the loss alone, jitted, is the same number
    loss = jax.jit(lambda x, labels: function(labels, x, 0.7, distance_metric=metric, **options))
    assert float(loss(x, labels)) == pytest.approx(float(want_value), rel=1e-6)


def test_one_host_call_computes_loss_and_gradient(monkeypatch):
    """Differentiating calls the host once, for loss and gradient together; the backward pass
    scales the stored gradient (by 3 here) without calling the host again."""
    calls = []
    original = frameworks.host_call

    def counted(want_grad, *args):
        calls.append("loss and grad" if want_grad else "loss")
        return original(want_grad, *args)

    monkeypatch.setattr(frameworks, "host_call", counted)
    monkeypatch.setattr(snj, "host_call", counted)
    snj._function.cache_clear()
    labels, x = batch(4)
    grad = jax.grad(lambda x: 3 * snj.triplet_semihard_loss(labels, x))(x)
    snj._function.cache_clear()
    assert calls == ["loss and grad"]
    np.testing.assert_allclose(
        np.asarray(grad), 3 * sn.triplet_semihard_loss_and_grad(labels, x)[1], rtol=1e-6
    )


def test_float64_under_x64():
    labels, x = batch(5, dtype=np.float64)
    with jax.enable_x64(True):
        value, grad = jax.value_and_grad(snj.triplet_hard_loss, argnums=1)(labels, jnp.asarray(x))
        assert value.dtype == jnp.float64 and grad.dtype == jnp.float64
    want_value, want_grad = sn.triplet_hard_loss_and_grad(labels, x)
    assert float(value) == float(want_value)
    np.testing.assert_array_equal(np.asarray(grad), want_grad)


@pytest.mark.parametrize("half", [jnp.float16, jnp.bfloat16])
def test_half_precision_is_computed_in_float32(half):
    labels, x = batch(6)
    x_half = jnp.asarray(x).astype(half)
    value, grad = jax.value_and_grad(snj.triplet_semihard_loss, argnums=1)(labels, x_half)
    assert value.dtype == half and grad.dtype == half
    want_value, want_grad = sn.triplet_semihard_loss_and_grad(
        labels, np.asarray(x_half.astype(jnp.float32))
    )
    assert value == jnp.asarray(want_value).astype(half)
    np.testing.assert_array_equal(np.asarray(grad), np.asarray(jnp.asarray(want_grad).astype(half)))


def test_vmap_over_a_leading_axis_of_batches():
    (labels, x), (labels2, x2) = batch(7), batch(8)
    values, grads = jax.vmap(jax.value_and_grad(snj.triplet_semihard_loss, argnums=1))(
        np.stack([labels, labels2]), np.stack([x, x2])
    )
    for i, (lab, emb) in enumerate([(labels, x), (labels2, x2)]):
        want_value, want_grad = sn.triplet_semihard_loss_and_grad(lab, emb)
        assert float(values[i]) == pytest.approx(float(want_value), rel=1e-6)
        np.testing.assert_allclose(np.asarray(grads[i]), want_grad, rtol=1e-6, atol=1e-7)
    # shared labels (not mapped), under jit
    values = jax.jit(jax.vmap(snj.triplet_hard_loss, in_axes=(None, 0)))(labels, np.stack([x, x2]))
    assert float(values[1]) == pytest.approx(float(sn.triplet_hard_loss(labels, x2)), rel=1e-6)


@pytest.mark.parametrize("shape", [(24, 1), (24,)])
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.uint8])
def test_labels_of_any_layout(shape, dtype):
    labels, x = batch(9)
    want = sn.triplet_semihard_loss(labels, x)
    assert float(snj.triplet_semihard_loss(labels.astype(dtype).reshape(shape), x)) == float(want)


def test_bad_input_is_refused_at_trace_time_and_nan_at_run_time():
    labels, x = batch(10)
    traced = jax.jit(snj.triplet_semihard_loss)
    with pytest.raises(ValueError, match=r"shape \(B, D\), got shape \(1, 24, 5\)"):
        traced.lower(labels, x[None])  # lowering traces, nothing runs
    with pytest.raises(ValueError, match="23 labels for embeddings of shape"):
        traced.lower(labels[:23], x)
    with pytest.raises(ValueError, match=r"\(B,\) or \(B, 1\)"):
        traced.lower(labels.reshape(4, 6), x)
    with pytest.raises(TypeError, match="embeddings must be floats"):
        traced.lower(labels, x.astype(np.int32))
    with pytest.raises(TypeError, match="callable distance_metric has no gradient"):
        snj.triplet_semihard_loss(labels, x, distance_metric=lambda e: e @ e.T)
    with pytest.raises(ValueError, match="unknown distance_metric"):
        snj.triplet_semihard_loss(labels, x, distance_metric="cosine")
    nan = x.copy()
    nan[1, 1] = np.nan
    with pytest.raises(Exception, match=r"NaN or infinite values in rows \[1\]"):
        jax.jit(jax.grad(snj.triplet_semihard_loss, argnums=1))(labels, nan)
    with pytest.raises(TypeError, match="not a tensor"):
        jax.jit(lambda m: snj.triplet_semihard_loss(labels, x, margin=m)).lower(1.0)


def test_the_benchmark_runs_its_jax_step(tmp_path):
    """bench.frameworks on a tiny batch: the driver, the bare NumPy worker and the JAX worker
    (each in its own process), its table and files. Nothing about speed."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.frameworks",
            "--frameworks",
            "jax",
            "--sizes",
            "64",
            "--repeats",
            "5",
            "--budget-s",
            "1",
            "--out",
            str(tmp_path),
        ],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "| jax | 64 |" in run.stdout
    rows = json.loads((tmp_path / "frameworks.json").read_text())["results"]
    assert rows["jax"]["rows"][0]["rounds"] == 5 and rows["numpy"]["rows"][0]["B"] == 64

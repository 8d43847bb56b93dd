"""semihard_numba.tensorflow: the golden cases through tf.GradientTape, eager and in tf.function,
half precision, jit_compile=True refused at trace time with the fix in the message, bad input at
trace time, and a plain tf.keras model compiled with the function as its loss (Keras 3 with
TF >= 2.16; tf.keras 2 where TF <= 2.15 is installed). Collected only where TensorFlow is
installed (conftest.py)."""

import numpy as np
import pytest
import tensorflow as tf

import semihard_numba as sn
import semihard_numba.tensorflow as snt

from framework_cases import batch, check_golden, golden_params

FUNCTIONS = {  # rule -> (TF function, NumPy function with its gradient, keyword arguments)
    "semihard": (snt.triplet_semihard_loss, sn.triplet_semihard_loss_and_grad, {}),
    "hard": (snt.triplet_hard_loss, sn.triplet_hard_loss_and_grad, {}),
    "hard, soft": (snt.triplet_hard_loss, sn.triplet_hard_loss_and_grad, {"soft": True}),
    "batch-all": (snt.triplet_batch_all_loss, sn.triplet_batch_all_loss_and_grad, {}),
    "all-semihard": (snt.triplet_all_semihard_loss, sn.triplet_all_semihard_loss_and_grad, {}),
}


def value_and_grad(function, labels, x):
    x = tf.convert_to_tensor(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        value = function(labels, x)
    return value, tape.gradient(value, x)


@pytest.mark.parametrize("rule, case", golden_params())
def test_golden_cases_through_gradient_tape(rule, case):
    soft = {"soft": case.soft} if rule == "hard" else {}

    def loss(labels, x):
        return snt.triplet_loss(rule, labels, x, case.margin, case.metric, **soft)

    value, grad = value_and_grad(loss, case.labels, case.embeddings)
    assert value.dtype == tf.float32 and grad.dtype == tf.float32
    check_golden(case, value.numpy(), grad.numpy())


@pytest.mark.parametrize("rule", sorted(FUNCTIONS))
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_graph_mode_matches_the_numpy_function(rule, metric, dtype):
    function, loss_and_grad, options = FUNCTIONS[rule]
    labels, x = batch(3, dtype=dtype)

    @tf.function
    def step(labels, x):
        return value_and_grad(
            lambda labels, x: function(labels, x, 0.7, distance_metric=metric, **options), labels, x
        )

    value, grad = step(tf.constant(labels), tf.constant(x))
    want_value, want_grad = loss_and_grad(labels, x, 0.7, distance_metric=metric, **options)
    assert value.dtype == dtype and grad.dtype == dtype
    assert value.numpy() == pytest.approx(float(want_value), rel=1e-6)
    np.testing.assert_allclose(grad.numpy(), want_grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("half", [tf.float16, tf.bfloat16])
def test_half_precision_is_computed_in_float32(half):
    labels, x = batch(6)
    x_half = tf.cast(x, half)
    value, grad = value_and_grad(snt.triplet_semihard_loss, labels, x_half)
    assert value.dtype == half and grad.dtype == half
    want_value, want_grad = sn.triplet_semihard_loss_and_grad(
        labels, tf.cast(x_half, tf.float32).numpy()
    )
    assert value.numpy() == tf.cast(float(want_value), half).numpy()
    np.testing.assert_array_equal(grad.numpy(), tf.cast(want_grad, half).numpy())


@pytest.mark.parametrize("shape", [(24, 1), (24,)])
@pytest.mark.parametrize("dtype", [np.int32, np.float32, np.uint8])
def test_labels_of_any_layout(shape, dtype):
    labels, x = batch(9)
    want = sn.triplet_semihard_loss(labels, x)
    assert snt.triplet_semihard_loss(labels.astype(dtype).reshape(shape), x).numpy() == want


def test_jit_compile_is_refused_at_trace_time_with_the_fix():
    labels, x = batch(10)
    step = tf.function(snt.triplet_semihard_loss, jit_compile=True)
    with pytest.raises(RuntimeError, match="jit_compile=False"):
        step.get_concrete_function(tf.constant(labels), tf.constant(x))


def test_bad_input_is_refused_at_trace_time():
    labels, x = batch(11)
    traced = tf.function(snt.triplet_semihard_loss)
    with pytest.raises(ValueError, match=r"shape \(B, D\), got shape \(1, 24, 5\)"):
        traced.get_concrete_function(tf.constant(labels), tf.constant(x[None]))
    with pytest.raises(ValueError, match="23 labels for embeddings of shape"):
        traced.get_concrete_function(tf.constant(labels[:23]), tf.constant(x))
    with pytest.raises(TypeError, match="embeddings must be floats"):
        traced.get_concrete_function(tf.constant(labels), tf.constant(x.astype(np.int32)))
    with pytest.raises(TypeError, match="callable distance_metric has no gradient"):
        snt.triplet_semihard_loss(labels, x, distance_metric=lambda e: e @ tf.transpose(e))
    # unknown batch size at trace time: checked when the host call runs
    unknown = tf.function(
        snt.triplet_semihard_loss,
        input_signature=[tf.TensorSpec([None], tf.int64), tf.TensorSpec([None, 5], tf.float32)],
    )
    with pytest.raises(Exception, match="23 labels"):
        unknown(tf.constant(labels[:23]), tf.constant(x))


def test_a_tf_keras_model_trains_with_the_function_as_its_loss():
    """The path of a user still on tf.keras 2 (TF <= 2.15): the function as loss=. With TF >=
    2.16, tf.keras is Keras 3, where the same call works too."""
    labels, x = batch(12, B=64, D=8, classes=8)
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((8,)), tf.keras.layers.Dense(4)])
    model.compile(optimizer=tf.keras.optimizers.SGD(0.05), loss=snt.triplet_semihard_loss)
    before = model.evaluate(x, labels, batch_size=64, verbose=0)
    want = sn.triplet_semihard_loss(labels, model.predict(x, verbose=0))
    assert before == pytest.approx(float(want), rel=1e-5)
    model.fit(x, labels, batch_size=64, epochs=20, verbose=0)
    assert model.evaluate(x, labels, batch_size=64, verbose=0) < before

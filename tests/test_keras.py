"""semihard_numba.keras on one Keras backend: the one Keras picks in this process (KERAS_BACKEND,
chosen before Keras is imported; run this file once per backend, as .ci/run does:
``KERAS_BACKEND=jax python -m pytest tests/test_keras.py``). The golden cases through the
backend's own autodiff, model.compile/fit with each loss, serialization and a saved model,
labels as Keras passes them, mixed precision, jit_compile, and what is refused. Collected only
where Keras and the backend are installed (conftest.py)."""

import numpy as np
import pytest

import keras  # collected only where Keras and its backend are installed (conftest.py)

import semihard_numba as sn
import semihard_numba.keras as snk

from framework_cases import batch, check_golden, golden_params

BACKEND = keras.backend.backend()
LOSSES = {  # class -> the NumPy function of its rule
    snk.TripletSemiHardLoss: sn.triplet_semihard_loss,
    snk.TripletHardLoss: sn.triplet_hard_loss,
    snk.TripletBatchAllLoss: sn.triplet_batch_all_loss,
    snk.TripletAllSemiHardLoss: sn.triplet_all_semihard_loss,
}


def value_and_grad(loss_fn, labels, x):
    """The loss and d loss / d x, by the backend's own automatic differentiation."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = loss_fn(labels, x)
        return value.numpy(), tape.gradient(value, x).numpy()
    if BACKEND == "jax":
        import jax

        value, grad = jax.value_and_grad(lambda x: loss_fn(labels, x))(x)
        return np.asarray(value), np.asarray(grad)
    if BACKEND == "torch":
        import torch

        x = torch.tensor(x, requires_grad=True)
        value = loss_fn(torch.as_tensor(labels), x)
        value.backward()
        return value.detach().numpy(), x.grad.numpy()
    pytest.skip(f"no autodiff test for the {BACKEND} backend")


@pytest.fixture
def fresh_session():
    """For the tests that build models: the default policy and a clean Keras state after."""
    yield
    keras.mixed_precision.set_global_policy("float32")
    keras.backend.clear_session()


@pytest.mark.parametrize("rule, case", golden_params())
def test_golden_cases_through_the_backends_autodiff(rule, case):
    soft = {"soft": case.soft} if rule == "hard" else {}
    loss_fn = snk.TripletLoss(rule, margin=case.margin, distance_metric=case.metric, **soft)
    value, grad = value_and_grad(loss_fn, case.labels, case.embeddings)
    check_golden(case, value, grad)


def clustered(seed=0, B=256, D=16, classes=16):
    """Noisy clusters that a linear map can pull apart."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, B)
    centres = rng.normal(size=(classes, D))
    return labels, (centres[labels] + 1.5 * rng.normal(size=(B, D))).astype(np.float32)


def model(D=16, out=8):
    return keras.Sequential([keras.Input((D,)), keras.layers.Dense(out)])


@pytest.mark.usefixtures("fresh_session")
@pytest.mark.parametrize("loss_class", LOSSES, ids=lambda c: c.__name__)
def test_compile_and_fit_train_with_default_arguments(loss_class):
    labels, x = clustered()
    keras.utils.set_random_seed(0)
    net = model()
    net.compile(optimizer=keras.optimizers.Adam(0.01), loss=loss_class())
    before = net.evaluate(x, labels, batch_size=256, verbose=0)
    # the loss Keras reports is the NumPy function's on the model's output
    want = LOSSES[loss_class](labels, net.predict(x, batch_size=256, verbose=0))
    assert before == pytest.approx(float(want), rel=1e-5)
    history = net.fit(x, labels, batch_size=64, epochs=10, shuffle=False, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    # the semi-hard rules fall slowly (they mine harder negatives as the embedding improves)
    assert net.evaluate(x, labels, batch_size=256, verbose=0) < before


@pytest.mark.parametrize("loss_class", LOSSES, ids=lambda c: c.__name__)
def test_get_config_round_trips(loss_class):
    options = {"margin": 0.3, "distance_metric": "angular", "name": "mine"}
    if loss_class is snk.TripletHardLoss:
        options["soft"] = True
    loss_fn = loss_class(**options)
    config = loss_fn.get_config()
    assert {key: config[key] for key in options} == options
    again = keras.losses.deserialize(keras.losses.serialize(loss_fn))
    assert type(again) is loss_class and again.get_config() == config
    labels, x = batch(2)
    assert float(again(labels, x)) == float(loss_fn(labels, x))


def test_tfa_argument_names_and_defaults():
    assert snk.TripletSemiHardLoss().get_config()["margin"] == 1.0
    assert snk.TripletSemiHardLoss().get_config()["distance_metric"] == "L2"
    hard = snk.TripletHardLoss(0.5, True, "squared-L2", "h")
    assert (hard.margin, hard.soft, hard.distance_metric, hard.name) == (
        0.5,
        True,
        "squared-L2",
        "h",
    )
    assert snk.TripletHardLoss().soft is False


@pytest.mark.usefixtures("fresh_session")
def test_a_saved_model_loads_and_its_next_step_gives_the_same_loss(tmp_path):
    labels, x = clustered(1)
    keras.utils.set_random_seed(0)
    net = model()
    net.compile(optimizer="adam", loss=snk.TripletHardLoss(margin=0.5, soft=True))
    net.fit(x, labels, batch_size=64, epochs=1, verbose=0)
    net.save(tmp_path / "model.keras")
    loaded = keras.models.load_model(tmp_path / "model.keras")
    assert type(loaded.loss) is snk.TripletHardLoss and loaded.loss.soft
    for _ in range(2):  # the loss before each step: the second one follows a restored update
        mine = net.train_on_batch(x[:64], labels[:64])
        theirs = loaded.train_on_batch(x[:64], labels[:64])
        assert theirs == pytest.approx(mine, rel=1e-6)


@pytest.mark.parametrize("shape", ["(B,)", "(B, 1)"])
@pytest.mark.parametrize("dtype", ["int32", "int64", "float32"])
def test_labels_as_keras_passes_them(shape, dtype):
    labels, x = batch(3)
    want = sn.triplet_semihard_loss(labels, x)
    given = labels.astype(dtype).reshape((-1,) if shape == "(B,)" else (-1, 1))
    assert float(snk.TripletSemiHardLoss()(given, x)) == pytest.approx(float(want), rel=1e-6)


def test_labels_keep_their_dtype():
    """Class ids that float32 cannot tell apart (2**24 and 2**24 + 1) stay distinct."""
    labels, x = batch(4, B=8, classes=2)
    big = (labels + 2**24).astype(np.int64 if BACKEND != "jax" else np.int32)
    want = sn.triplet_semihard_loss(labels, x)
    assert float(snk.TripletSemiHardLoss()(big, x)) == pytest.approx(float(want), rel=1e-6)


@pytest.mark.usefixtures("fresh_session")
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision_is_computed_in_float32(policy):
    labels, x = clustered(2, B=64)
    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    net = model()
    net.compile(optimizer="sgd", loss=snk.TripletSemiHardLoss())
    output = net.predict(x, verbose=0)
    assert str(output.dtype) == policy.split("_")[1]  # the model computes in half precision
    got = net.evaluate(x, labels, batch_size=64, verbose=0)
    want = sn.triplet_semihard_loss(labels, np.asarray(output, dtype=np.float32))
    assert got == pytest.approx(float(want), rel=1e-6)
    history = net.fit(x, labels, batch_size=64, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.usefixtures("fresh_session")
def test_jit_compile():
    """TensorFlow: XLA cannot compile the host call, so the first step says what to do. JAX
    compiles it as a host callback. (torch's jit_compile=True is torch.compile: not tested.)"""
    labels, x = clustered(3, B=64)
    net = model()
    net.compile(optimizer="sgd", loss=snk.TripletSemiHardLoss(), jit_compile=True)
    if BACKEND == "tensorflow":
        with pytest.raises(RuntimeError, match="jit_compile=False"):
            net.fit(x, labels, batch_size=64, epochs=1, verbose=0)
    elif BACKEND == "jax":
        history = net.fit(x, labels, batch_size=64, epochs=1, verbose=0)
        assert np.isfinite(history.history["loss"][0])
    else:
        pytest.skip(f"jit_compile=True is not tested on {BACKEND}")


@pytest.mark.usefixtures("fresh_session")
def test_sample_and_class_weights_are_refused():
    labels, x = clustered(4, B=64)
    net = model()
    net.compile(optimizer="sgd", loss=snk.TripletSemiHardLoss())
    with pytest.raises(ValueError, match="does not take sample_weight"):
        net.fit(x, labels, sample_weight=np.ones(64), verbose=0)
    with pytest.raises(ValueError, match="does not take sample_weight"):
        net.fit(x, labels, class_weight={i: 1.0 for i in range(16)}, verbose=0)
    with pytest.raises(ValueError, match="does not take sample_weight"):
        snk.TripletSemiHardLoss()(labels, x, sample_weight=np.ones(64))


@pytest.mark.usefixtures("fresh_session")
def test_bad_input():
    labels, x = batch(5)
    with pytest.raises(TypeError, match="callable distance_metric has no gradient"):
        snk.TripletSemiHardLoss(distance_metric=lambda e: e)
    with pytest.raises(ValueError, match="unknown distance_metric"):
        snk.TripletHardLoss(distance_metric="cosine")
    with pytest.raises(ValueError, match="soft=True is a form"):
        snk.TripletLoss("semihard", soft=True)
    with pytest.raises(ValueError, match=r"shape \(B, D\)"):
        snk.TripletSemiHardLoss()(labels, x[None])
    with pytest.raises(ValueError, match="23 labels"):
        snk.TripletSemiHardLoss()(labels[:23], x)
    # a model whose output is not (B, D): refused when fit traces its step
    net = keras.Sequential([keras.Input((4, 6)), keras.layers.Dense(3)])
    net.compile(optimizer="sgd", loss=snk.TripletSemiHardLoss())
    with pytest.raises(ValueError, match=r"shape \(B, D\)"):
        net.fit(np.zeros((24, 4, 6), np.float32), labels, verbose=0)


@pytest.mark.usefixtures("fresh_session")
def test_the_example_trains(tmp_path, capsys):
    """examples/train_keras.py, shortened: the held-out loss falls and the 1-NN accuracy rises
    (over seeds 0-3 on each backend, 40 steps take it from 0.98-0.99 to 0.88-0.92 and the
    accuracy from 0.85-0.90 to 0.93-0.96)."""
    pytest.importorskip("sklearn", reason="the example needs scikit-learn")
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "train_keras.py"
    spec = importlib.util.spec_from_file_location("train_keras", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    result = example.main(["--epochs", "2", "--steps", "20", "--no-plot"])
    assert len(result.batch_losses) == 40
    assert result.final_loss < result.initial_loss - 0.05
    assert result.final_accuracy > result.initial_accuracy
    printed = capsys.readouterr().out
    assert "before:" in printed and "after:" in printed

"""The triplet losses as TensorFlow functions (optional: ``pip install
"semihard-numba[tensorflow]"``), in eager mode and inside `tf.function`.

    import semihard_numba.tensorflow as snt
    with tf.GradientTape() as tape:
        loss = snt.triplet_semihard_loss(labels, embeddings)

With the argument order of ``tfa.losses.triplet_semihard_loss(y_true, y_pred, margin, ...)``,
each function can be passed to ``model.compile(loss=...)`` of tf.keras 2 (TF <= 2.15, where TFA
last ran) or of Keras 3; for Keras 3, `semihard_numba.keras` has serializable loss classes.

The loss is computed on the host by the NumPy/Numba backends, as a `tf.numpy_function` inside
`tf.custom_gradient`: one host call returns the loss and its gradient, and the backward pass only
scales that gradient (so a call whose gradient is not wanted pays for it too). Tensors on a GPU
are copied to the host and the gradient back. XLA cannot compile a host call: under
``tf.function(jit_compile=True)`` (and Keras's ``jit_compile=True``) the functions raise a
RuntimeError that says so, at trace time. float16 and bfloat16 are computed in float32 and
returned in their own dtype.
"""

try:
    import tensorflow as tf
    from tensorflow.python.ops import control_flow_util
except ImportError as error:
    from ._frameworks import missing

    raise missing("tensorflow", "TensorFlow", "tensorflow") from error

import functools

from ._frameworks import check_options, check_shapes, host_call
from ._rules import ALL_SEMIHARD, BATCH_ALL, HARD, SEMIHARD

__all__ = [
    "triplet_all_semihard_loss",
    "triplet_batch_all_loss",
    "triplet_hard_loss",
    "triplet_loss",
    "triplet_semihard_loss",
]

JIT_COMPILE_ERROR = (
    "semihard_numba computes the triplet loss on the host (tf.numpy_function), which XLA cannot "
    "compile: pass jit_compile=False to model.compile(...) or tf.function(...) (Keras's "
    "jit_compile='auto' turns XLA on where a GPU is present)"
)


def _check_not_in_xla():
    """Refuse, at trace time, a graph that XLA will compile (tf.function(jit_compile=True)
    traces its body in an XLA context): XLA would otherwise fail later, deep inside, on the
    PyFunc op."""
    if control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph()):
        raise RuntimeError(JIT_COMPILE_ERROR)


def triplet_loss(rule, labels, embeddings, margin=1.0, distance_metric="L2", soft=False):
    """The loss of `rule` ("semihard", "hard", "batch-all" or "all-semihard"), as the NumPy
    function of that rule computes it: a scalar tensor of the embeddings' dtype.

    labels: (B,) or (B, 1), integer or float class ids; embeddings: (B, D) floats. Only the
    embeddings have a gradient."""
    margin = check_options(rule, margin, distance_metric, soft)
    labels = tf.convert_to_tensor(labels)
    embeddings = tf.convert_to_tensor(embeddings)
    if embeddings.shape.rank is not None and labels.shape.rank is not None:
        check_shapes(labels.shape.as_list(), embeddings.shape.as_list())
    if not embeddings.dtype.is_floating:
        raise TypeError(
            f"embeddings must be floats (float16, bfloat16, float32 or float64), got "
            f"{embeddings.dtype.name}: cast them first, e.g. tf.cast(embeddings, tf.float32)"
        )
    if not (labels.dtype.is_integer or labels.dtype.is_floating):
        raise TypeError(f"labels must be integer or float class ids, got {labels.dtype.name}")
    _check_not_in_xla()
    if labels.dtype == tf.bfloat16:  # NumPy has no bfloat16
        labels = tf.cast(labels, tf.float32)
    host = functools.partial(host_call, True, rule, bool(soft), margin, distance_metric)
    return _with_gradient(host, tf.reshape(labels, [-1]), embeddings)


def _with_gradient(host, labels, embeddings):
    compute = tf.float32 if embeddings.dtype in (tf.float16, tf.bfloat16) else embeddings.dtype

    @tf.custom_gradient
    def loss(labels, x):
        value, grad = tf.numpy_function(
            host, [labels, tf.cast(x, compute)], [compute, compute], stateful=False
        )
        value = tf.ensure_shape(value, [])
        grad = tf.ensure_shape(grad, x.shape)

        def backward(upstream):
            return None, tf.cast(tf.cast(upstream, compute) * grad, x.dtype)

        return tf.cast(value, x.dtype), backward

    return loss(labels, embeddings)


def triplet_semihard_loss(y_true, y_pred, margin=1.0, distance_metric="L2"):
    """`semihard_numba.triplet_semihard_loss` as a TensorFlow function, with the signature of
    ``tfa.losses.triplet_semihard_loss``."""
    return triplet_loss(SEMIHARD, y_true, y_pred, margin, distance_metric)


def triplet_hard_loss(y_true, y_pred, margin=1.0, soft=False, distance_metric="L2"):
    """`semihard_numba.triplet_hard_loss` as a TensorFlow function, with the signature of
    ``tfa.losses.triplet_hard_loss``."""
    return triplet_loss(HARD, y_true, y_pred, margin, distance_metric, soft)


def triplet_batch_all_loss(y_true, y_pred, margin=1.0, distance_metric="L2"):
    """`semihard_numba.triplet_batch_all_loss` (sentence-transformers') as a TensorFlow
    function."""
    return triplet_loss(BATCH_ALL, y_true, y_pred, margin, distance_metric)


def triplet_all_semihard_loss(y_true, y_pred, margin=1.0, distance_metric="L2"):
    """`semihard_numba.triplet_all_semihard_loss` (pytorch-metric-learning's) as a TensorFlow
    function."""
    return triplet_loss(ALL_SEMIHARD, y_true, y_pred, margin, distance_metric)

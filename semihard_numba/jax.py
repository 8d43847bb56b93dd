"""The triplet losses as JAX functions (optional: ``pip install "semihard-numba[jax]"``).

    import jax, semihard_numba.jax as snj
    loss, grad = jax.value_and_grad(snj.triplet_semihard_loss, argnums=1)(labels, embeddings)

They work under `jax.jit`, `jax.grad`, `jax.value_and_grad` and `jax.vmap` (over a leading axis
of batches, one host call per batch). The loss is computed on the host by the NumPy/Numba
backends through `jax.pure_callback`: when JAX differentiates, one host call returns the loss and
its gradient together, and the backward pass only scales that stored gradient
(`jax.custom_vjp`); without differentiation the host computes the loss alone.

Arrays on a GPU are copied to the host for the call and the gradient back (pure_callback's
contract). float32 is computed in float32, float64 (under ``jax_enable_x64``) in float64,
float16 and bfloat16 in float32 and returned in their own dtype. Shapes are checked when the
function is traced; margin, distance_metric and soft are constants of the traced program. What
can only be seen in the values (NaN or infinite embeddings) is raised by the host call and reaches
the caller as JAX's runtime error, carrying the library's message.
"""

try:
    import jax
    import jax.numpy as jnp
except ImportError as error:
    from ._frameworks import missing

    raise missing("jax", "JAX", "jax") from error

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


def _compute_dtype(dtype):
    """float16 and bfloat16 (which NumPy lacks) are computed in float32."""
    return jnp.float32 if dtype in (jnp.float16, jnp.bfloat16) else dtype


@functools.lru_cache(maxsize=None)
def _function(rule, soft, margin, metric):
    """The rule with these settings as a differentiable function of (labels, embeddings)."""
    settings = (rule, soft, margin, metric)

    def call_host(labels, x, want_grad):
        dtype = _compute_dtype(x.dtype)
        shapes = jax.ShapeDtypeStruct((), dtype)
        if want_grad:
            shapes = (shapes, jax.ShapeDtypeStruct(x.shape, dtype))
        # "sequential": under vmap, one host call per batch of the mapped axis
        return jax.pure_callback(
            functools.partial(host_call, want_grad, *settings),
            shapes,
            labels,
            x.astype(dtype),
            vmap_method="sequential",
        )

    @jax.custom_vjp
    def loss(labels, x):
        return call_host(labels, x, want_grad=False).astype(x.dtype)

    def forward(labels, x):
        value, grad = call_host(labels, x, want_grad=True)
        return value.astype(x.dtype), grad

    def backward(grad, cotangent):
        # labels get no cotangent (None); the loss's cotangent has the embeddings' dtype
        return None, (cotangent.astype(grad.dtype) * grad).astype(cotangent.dtype)

    loss.defvjp(forward, backward)
    return loss


def triplet_loss(rule, labels, embeddings, margin=1.0, distance_metric="L2", soft=False):
    """The loss of `rule` ("semihard", "hard", "batch-all" or "all-semihard"), as the NumPy
    function of that rule computes it: a scalar of the embeddings' dtype.

    labels: (B,) or (B, 1), integer or float class ids; embeddings: (B, D) floats. Only the
    embeddings have a gradient."""
    margin = check_options(rule, margin, distance_metric, soft)
    labels, embeddings = jnp.asarray(labels), jnp.asarray(embeddings)
    check_shapes(labels.shape, embeddings.shape)
    if not jnp.issubdtype(embeddings.dtype, jnp.floating):
        raise TypeError(
            f"embeddings must be floats (float16, bfloat16, float32 or float64), got "
            f"{embeddings.dtype}: convert them first, e.g. embeddings.astype(jnp.float32)"
        )
    if not jnp.issubdtype(labels.dtype, jnp.number) or jnp.issubdtype(
        labels.dtype, jnp.complexfloating
    ):
        raise TypeError(f"labels must be integer or float class ids, got {labels.dtype}")
    if labels.dtype in (jnp.float16, jnp.bfloat16):  # no NumPy twin for bfloat16
        labels = labels.astype(jnp.float32)
    return _function(rule, bool(soft), margin, distance_metric)(labels.reshape(-1), embeddings)


def triplet_semihard_loss(labels, embeddings, margin=1.0, distance_metric="L2"):
    """`semihard_numba.triplet_semihard_loss` (TFA's) as a JAX function."""
    return triplet_loss(SEMIHARD, labels, embeddings, margin, distance_metric)


def triplet_hard_loss(labels, embeddings, margin=1.0, soft=False, distance_metric="L2"):
    """`semihard_numba.triplet_hard_loss` (TFA's) as a JAX function."""
    return triplet_loss(HARD, labels, embeddings, margin, distance_metric, soft)


def triplet_batch_all_loss(labels, embeddings, margin=1.0, distance_metric="L2"):
    """`semihard_numba.triplet_batch_all_loss` (sentence-transformers') as a JAX function."""
    return triplet_loss(BATCH_ALL, labels, embeddings, margin, distance_metric)


def triplet_all_semihard_loss(labels, embeddings, margin=1.0, distance_metric="L2"):
    """`semihard_numba.triplet_all_semihard_loss` (pytorch-metric-learning's) as a JAX
    function."""
    return triplet_loss(ALL_SEMIHARD, labels, embeddings, margin, distance_metric)

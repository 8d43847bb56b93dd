"""The triplet losses as Keras 3 losses (optional: ``pip install "semihard-numba[keras]"``), the
drop-in replacement for ``tfa.losses.TripletSemiHardLoss`` and ``TripletHardLoss``:

    from semihard_numba.keras import TripletSemiHardLoss
    model.compile(optimizer="adam", loss=TripletSemiHardLoss())
    model.fit(x, labels)

They run on the TensorFlow, JAX and torch backends of Keras (`semihard_numba.tensorflow`,
`semihard_numba.jax`, `semihard_numba.torch` underneath: one host call computes the loss and its
gradient, the backend's autodiff scales that gradient). Labels come as Keras passes them: (B,) or
(B, 1), integer or float, and keep their dtype (no cast to float32, which would merge class ids
above 2**24). The model's output must be (B, D) embeddings; the loss is the rule's
mean over the whole batch, one scalar per batch.

- ``sample_weight`` (and ``class_weight``, which Keras turns into it) is refused with a
  ValueError: the rules average over pairs or triplets of the batch, not over samples, so a
  per-sample weight has no meaning that would not silently change the rule.
- Under a ``mixed_float16`` or ``mixed_bfloat16`` policy the loss is computed in float32 (Keras
  casts y_pred to the loss's dtype, float32 by default; half precision is computed in float32
  anyway).
- On the TensorFlow backend, XLA cannot compile the host call: ``jit_compile=True`` raises a
  RuntimeError naming ``jit_compile=False`` at the first step. Keras's default "auto" uses XLA
  only where a GPU is present, so on a GPU pass ``jit_compile=False``. The JAX backend compiles
  the call as a host callback and needs nothing. On the torch backend ``jit_compile=True`` means
  torch.compile, which is untested with these losses (the host call is a graph break).
- The classes are registered as serializable (package "semihard_numba"): a ``.keras`` model
  saved with one loads with ``keras.models.load_model`` once this module is imported.
"""

try:
    import keras
except ImportError as error:
    from ._frameworks import missing

    raise missing("keras", "Keras 3", "keras") from error

if not keras.__version__.startswith("3."):  # pragma: no cover - Keras 2 ships with TF <= 2.15
    raise ImportError(
        f"semihard_numba.keras needs Keras 3, found {keras.__version__}; with tf.keras 2 pass "
        "the functions of semihard_numba.tensorflow as loss= instead"
    )

from ._frameworks import check_options
from ._rules import ALL_SEMIHARD, BATCH_ALL, HARD, SEMIHARD

__all__ = [
    "TripletAllSemiHardLoss",
    "TripletBatchAllLoss",
    "TripletHardLoss",
    "TripletLoss",
    "TripletSemiHardLoss",
]

SAMPLE_WEIGHT_ERROR = (
    "{name} does not take sample_weight (nor fit's class_weight, which Keras turns into "
    "sample weights): the loss is a mean over the batch's pairs or triplets, not over samples. "
    "To weight classes, sample the batches accordingly"
)


class TripletLoss(keras.losses.Loss):
    """A triplet loss of `rule` as a Keras loss; the subclasses fix the rule and are the ones to
    use. Called as ``loss(y_true=labels, y_pred=embeddings)``; returns a scalar.

    Parameters
    ----------
    rule : {"semihard", "hard", "batch-all", "all-semihard"}
    margin : float, default 1.0
    distance_metric : {"L2", "squared-L2", "angular"}, default "L2"
        A callable is refused here: the loss is trained through its gradient, which a callable
        metric does not have.
    soft : bool, default False
        "hard" only: the soft-margin form log1p(exp(hp - hn)).
    name, reduction, dtype
        As `keras.losses.Loss`. Every reduction gives the same value: the rule already reduced
        the batch to one number.
    """

    def __init__(
        self,
        rule,
        margin=1.0,
        distance_metric="L2",
        soft=False,
        name=None,
        reduction="sum_over_batch_size",
        dtype=None,
    ):
        self.margin = check_options(rule, margin, distance_metric, soft)
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.rule, self.distance_metric, self.soft = rule, distance_metric, bool(soft)
        self._torch_module = None

    def __call__(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError(SAMPLE_WEIGHT_ERROR.format(name=type(self).__name__))
        with keras.name_scope(self.name):
            # labels keep their dtype (Keras's Loss would cast them to float32, which merges
            # distinct class ids above 2**24); the embeddings take the loss's dtype, float32
            y_true = keras.ops.convert_to_tensor(y_true)
            y_pred = keras.ops.convert_to_tensor(y_pred, dtype=self.dtype)
            return self.call(y_true, y_pred)

    def call(self, y_true, y_pred):
        backend = keras.backend.backend()
        if backend == "tensorflow":
            from .tensorflow import triplet_loss
        elif backend == "jax":
            from .jax import triplet_loss
        elif backend == "torch":
            return self._torch(y_true, y_pred)
        elif backend == "numpy":  # no training there: the loss value alone
            return self._numpy(y_true, y_pred)
        else:
            raise NotImplementedError(
                f"semihard_numba.keras runs on the tensorflow, jax and torch backends of Keras, "
                f"not on {backend!r}"
            )
        return triplet_loss(self.rule, y_true, y_pred, self.margin, self.distance_metric, self.soft)

    def _torch(self, y_true, y_pred):
        from ._frameworks import check_shapes
        from .torch import TripletLoss as TorchTripletLoss

        check_shapes(y_true.shape, y_pred.shape)
        if self._torch_module is None:
            self._torch_module = TorchTripletLoss(
                self.rule, self.margin, self.distance_metric, soft=self.soft
            )
        return self._torch_module(y_true, y_pred)

    def _numpy(self, y_true, y_pred):
        from ._frameworks import check_shapes, host_call

        check_shapes(y_true.shape, y_pred.shape)
        return host_call(
            False, self.rule, self.soft, self.margin, self.distance_metric, y_true, y_pred
        )

    def get_config(self):
        config = super().get_config()
        config.update(margin=self.margin, distance_metric=self.distance_metric)
        return config


@keras.saving.register_keras_serializable(package="semihard_numba")
class TripletSemiHardLoss(TripletLoss):
    """`semihard_numba.triplet_semihard_loss` as a Keras loss, as
    ``tfa.losses.TripletSemiHardLoss(margin=1.0, distance_metric="L2", name=None)``."""

    def __init__(self, margin=1.0, distance_metric="L2", name="triplet_semihard_loss", **kwargs):
        super().__init__(SEMIHARD, margin, distance_metric, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="semihard_numba")
class TripletHardLoss(TripletLoss):
    """`semihard_numba.triplet_hard_loss` as a Keras loss, as
    ``tfa.losses.TripletHardLoss(margin=1.0, soft=False, distance_metric="L2", name=None)``."""

    def __init__(
        self, margin=1.0, soft=False, distance_metric="L2", name="triplet_hard_loss", **kwargs
    ):
        super().__init__(HARD, margin, distance_metric, soft=soft, name=name, **kwargs)

    def get_config(self):
        return {**super().get_config(), "soft": self.soft}


@keras.saving.register_keras_serializable(package="semihard_numba")
class TripletBatchAllLoss(TripletLoss):
    """`semihard_numba.triplet_batch_all_loss` (sentence-transformers' BatchAllTripletLoss) as a
    Keras loss."""

    def __init__(self, margin=1.0, distance_metric="L2", name="triplet_batch_all_loss", **kwargs):
        super().__init__(BATCH_ALL, margin, distance_metric, name=name, **kwargs)


@keras.saving.register_keras_serializable(package="semihard_numba")
class TripletAllSemiHardLoss(TripletLoss):
    """`semihard_numba.triplet_all_semihard_loss` (pytorch-metric-learning's semi-hard miner with
    its triplet loss) as a Keras loss."""

    def __init__(
        self, margin=1.0, distance_metric="L2", name="triplet_all_semihard_loss", **kwargs
    ):
        super().__init__(ALL_SEMIHARD, margin, distance_metric, name=name, **kwargs)

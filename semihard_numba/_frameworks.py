"""What the Keras, JAX and TensorFlow integrations share: the checks they run before any data
exists (construction, trace time) and the one host call that computes a rule's loss and its
gradient from NumPy arrays."""

import numpy as np

from . import _api
from ._inputs import check_flag, check_margin, check_metric
from ._rules import HARD

RULES = tuple(_api.RULE_FUNCTIONS)


def missing(module, package, extra):
    """The ImportError of an integration whose framework is not installed."""
    return ImportError(
        f'semihard_numba.{module} needs {package}: pip install "semihard-numba[{extra}]" (the '
        "rest of semihard_numba works without it)"
    )


def check_options(rule, margin, distance_metric, soft=False):
    """The settings of a framework loss, checked where it is built: a callable metric is refused
    here, since the framework will ask for the gradient and a callable has none. Returns the
    margin as a Python float (a constant of the traced program)."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}: use one of {', '.join(RULES)}")
    if callable(distance_metric):
        raise TypeError(
            "a callable distance_metric has no gradient, and the framework losses are trained "
            "through theirs: use 'L2', 'squared-L2' or 'angular' (the NumPy function "
            "semihard_numba.triplet_*_loss takes a callable for the loss value alone)"
        )
    check_metric(distance_metric)
    if check_flag("soft", soft) and rule != HARD:
        raise ValueError('soft=True is a form of the "hard" rule only')
    try:
        return check_margin(margin)
    except TypeError:
        raise TypeError(
            f"margin must be a Python or NumPy real number (a constant of the traced program, "
            f"not a tensor), got {margin!r}"
        ) from None


def check_shapes(labels_shape, embeddings_shape):
    """Shape checks on static shapes (None where a dimension is unknown), at trace time."""
    labels_shape, embeddings_shape = tuple(labels_shape), tuple(embeddings_shape)
    if len(embeddings_shape) != 2:
        raise ValueError(
            f"embeddings (y_pred) must have shape (B, D), got shape {embeddings_shape}: flatten "
            "the model's output to one vector per sample"
        )
    if not (len(labels_shape) == 1 or (len(labels_shape) == 2 and labels_shape[1] in (1, None))):
        raise ValueError(f"labels (y_true) must have shape (B,) or (B, 1), got {labels_shape}")
    B, n = embeddings_shape[0], labels_shape[0]
    if B is not None and n is not None and B != n:
        raise ValueError(
            f"labels and embeddings disagree on the batch size: {n} labels for embeddings of "
            f"shape {embeddings_shape}"
        )


def host_call(want_grad, rule, soft, margin, metric, labels, embeddings):
    """The loss as a 0-d array of the embeddings' dtype (float32 or float64); with want_grad,
    (loss, gradient (B, D)) of that dtype, computed in one pass."""
    function = _api.RULE_FUNCTIONS[rule][want_grad]
    options = {"soft": soft} if rule == HARD else {}
    embeddings = np.asarray(embeddings)
    result = function(np.asarray(labels), embeddings, margin, distance_metric=metric, **options)
    if not want_grad:
        return np.asarray(result, dtype=embeddings.dtype)
    return tuple(np.asarray(part, dtype=embeddings.dtype) for part in result)

"""Reference ("peer") implementations of the triplet losses, for benchmarks.

Every peer takes NumPy inputs

    labels      int64,   shape (B,)
    embeddings  float32, shape (B, D)
    margin      float (default 1.0)

and returns the loss as a Python ``float``; ``loss_and_grad`` returns ``(loss, grad)`` with
``grad`` = d loss / d embeddings as a float32 NumPy array of shape (B, D), computed by the
framework's autograd. ``CALLS[peer][rule]`` says what each peer calls for each of the
benchmark's rules ("hard-soft" is the library's "hard" rule with soft=True):

``tfa``                    tensorflow_addons.losses: ``triplet_semihard_loss`` (the definition
                           semihard_numba reproduces) and ``triplet_hard_loss`` (soft or not),
                           distance_metric="L2" (TFA's default).
``sentence_transformers``  sentence-transformers' BatchSemiHardTripletLoss, BatchHardTripletLoss,
                           BatchHardSoftMarginTripletLoss and BatchAllTripletLoss (euclidean
                           distance, their default), built with ``model=None`` and called through
                           their ``batch_*_triplet_loss(labels, embeddings)`` methods on torch
                           tensors. Their default margin is 5; here it is ``margin``.
``pml``                    pytorch-metric-learning TripletMarginMiner + TripletMarginLoss. For
                           "semihard" as a user would pair them (default, normalising distance):
                           a DIFFERENT definition, see :func:`pml_loss`, not expected to match
                           TFA's. For "all-semihard" with LpDistance(normalize_embeddings=False)
                           and one margin for both: the library's "all-semihard" rule exactly.

All heavy imports (tensorflow, torch, ...) are done lazily inside the
functions, so this module imports with none of those packages installed.
Everything runs on the CPU.

Run ``python bench/peers.py`` for an availability report and a small
agreement check against the library's "cpu" backend; ``python -m bench --impl tfa``
times a peer.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from semihard_numba._batches import clustered_batch

__all__ = [
    "CALLS",
    "available",
    "library_functions",
    "library_rule",
    "loss",
    "loss_and_grad",
    "prepare",
    "tfa_loss",
    "tfa_loss_and_grad",
    "sentence_transformers_loss",
    "sentence_transformers_loss_and_grad",
    "pml_loss",
    "pml_loss_and_grad",
    "tfa_estimated_peak_bytes",
]

# What each peer calls for each rule it has (the benchmark's rule names).
CALLS = {
    "tfa": {
        "semihard": "tfa.losses.triplet_semihard_loss",
        "hard": "tfa.losses.triplet_hard_loss",
        "hard-soft": "tfa.losses.triplet_hard_loss(soft=True)",
    },
    "sentence_transformers": {
        "semihard": "BatchSemiHardTripletLoss",
        "hard": "BatchHardTripletLoss",
        "hard-soft": "BatchHardSoftMarginTripletLoss",
        "batch-all": "BatchAllTripletLoss",
    },
    "pml": {
        "semihard": 'TripletMarginMiner("semihard") + TripletMarginLoss, default distance',
        "all-semihard": 'TripletMarginMiner("semihard") + TripletMarginLoss, '
        "LpDistance(normalize_embeddings=False)",
    },
}


def _as_inputs(labels, embeddings):
    labels = np.ascontiguousarray(np.asarray(labels).reshape(-1), dtype=np.int64)
    embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2 or embeddings.shape[0] != labels.shape[0]:
        raise ValueError(
            f"expected labels (B,) and embeddings (B, D); got {labels.shape} and {embeddings.shape}"
        )
    return labels, embeddings


# --------------------------------------------------------------------------
# TensorFlow Addons
# --------------------------------------------------------------------------

_TF_CACHE: dict = {}


def _import_tf():
    """Import tensorflow + tensorflow_addons quietly, CPU only (cached)."""
    if "tf" in _TF_CACHE:
        return _TF_CACHE["tf"], _TF_CACHE["tfa"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import tensorflow as tf
        import tensorflow_addons as tfa
    try:
        tf.get_logger().setLevel("ERROR")
    except Exception:  # pragma: no cover
        pass
    try:
        # Force CPU (a no-op for tensorflow-cpu); fails harmlessly if TF has
        # already initialised its devices.
        tf.config.set_visible_devices([], "GPU")
    except Exception:  # pragma: no cover
        pass
    _TF_CACHE["tf"], _TF_CACHE["tfa"] = tf, tfa
    return tf, tfa


def _tfa_call(rule, y, x, margin):
    """The rule's TFA loss on tensors (each TFA loss is itself a ``tf.function``)."""
    _, tfa = _import_tf()
    if rule == "semihard":
        return tfa.losses.triplet_semihard_loss(y, x, margin=float(margin), distance_metric="L2")
    return tfa.losses.triplet_hard_loss(
        y, x, margin=float(margin), soft=rule == "hard-soft", distance_metric="L2"
    )


def _tfa_value_and_grad_fn(margin, rule="semihard"):
    tf, _ = _import_tf()
    key = ("vg", float(margin), rule)
    fn = _TF_CACHE.get(key)
    if fn is None:

        @tf.function
        def fn(y, x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = _tfa_call(rule, y, x, margin)
            return loss, tape.gradient(loss, x)

        _TF_CACHE[key] = fn
    return fn


def tfa_loss(labels, embeddings, margin=1.0, rule="semihard"):
    """``tfa.losses.triplet_semihard_loss(y_true, y_pred, margin, "L2")`` (or, for "hard" and
    "hard-soft", ``triplet_hard_loss(y_true, y_pred, margin, soft, "L2")``).

    TFA 0.23 signature: ``triplet_semihard_loss(y_true, y_pred, margin=1.0,
    distance_metric="L2")``; the function is itself a ``tf.function`` (graph
    mode).  Memory is O(B^3) for the semi-hard loss: it tiles the B x B distance
    matrix B times (several float32 (B*B, B) tensors), see
    :func:`tfa_estimated_peak_bytes`; the hard loss needs (B, B) masks only.
    """
    labels, embeddings = _as_inputs(labels, embeddings)
    tf, _ = _import_tf()
    with tf.device("/CPU:0"):
        loss = _tfa_call(rule, tf.constant(labels), tf.constant(embeddings), margin)
    return float(loss.numpy())


def tfa_loss_and_grad(labels, embeddings, margin=1.0, rule="semihard"):
    """TFA loss and d loss / d embeddings (tf.GradientTape, in a tf.function)."""
    labels, embeddings = _as_inputs(labels, embeddings)
    tf, _ = _import_tf()
    fn = _tfa_value_and_grad_fn(margin, rule)
    with tf.device("/CPU:0"):
        loss, grad = fn(tf.constant(labels), tf.constant(embeddings))
    return float(loss.numpy()), np.asarray(grad.numpy(), dtype=np.float32)


def tfa_estimated_peak_bytes(batch_size: int) -> int:
    """Rough peak-memory estimate for TFA's semi-hard loss at batch size B (forward).

    The float32 tile ``(B*B, B)`` alone is 4*B^3 bytes (B=1024: 4.3 GB,
    B=4096: 275 GB) and several such tensors are alive at once: peak RSS was
    measured at 18 GiB (B=1024, loss only; 19 GiB with gradient) and 2.6 GiB
    (B=512) with TF 2.15.1 on CPU, i.e. about 18*B^3 bytes.  So B=2048 needs
    ~155 GB and B=4096 ~1.2 TB: not runnable on an ordinary machine.
    """
    b = int(batch_size)
    return 18 * b**3


# --------------------------------------------------------------------------
# torch helpers
# --------------------------------------------------------------------------


def _torch_inputs(labels, embeddings, requires_grad):
    import torch

    labels, embeddings = _as_inputs(labels, embeddings)
    y = torch.from_numpy(labels)
    x = torch.from_numpy(embeddings.copy() if requires_grad else embeddings)
    x = x.to(device="cpu", dtype=torch.float32)
    if requires_grad:
        x.requires_grad_(True)
    return y, x


# --------------------------------------------------------------------------
# sentence-transformers
# --------------------------------------------------------------------------

_ST_CACHE: dict = {}
# rule -> (class, the method that takes (labels, embeddings), whether it has a margin)
_ST_LOSSES = {
    "semihard": ("BatchSemiHardTripletLoss", "batch_semi_hard_triplet_loss", True),
    "hard": ("BatchHardTripletLoss", "batch_hard_triplet_loss", True),
    "hard-soft": ("BatchHardSoftMarginTripletLoss", "batch_hard_triplet_soft_margin_loss", False),
    "batch-all": ("BatchAllTripletLoss", "batch_all_triplet_loss", True),
}


def _st_loss_object(margin, rule="semihard"):
    """The rule's sentence-transformers loss with no model (model=None): its bound
    ``batch_*_triplet_loss(labels, embeddings)`` method.

    ``__init__`` only stores ``model``, ``margin`` (not the soft-margin loss, which has none) and
    ``distance_metric``, so passing ``model=None`` builds the real loss object without a
    SentenceTransformer; the ``batch_*`` methods never touch the model. The distance is the class
    default, ``BatchHardTripletLossDistanceFunction.euclidean_distance`` (spelled
    ``eucledian_distance`` in older releases), i.e. plain L2 like TFA's "L2".
    """
    key = (float(margin), rule)
    method = _ST_CACHE.get(key)
    if method is None:
        import importlib

        name, method_name, has_margin = _ST_LOSSES[rule]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:  # sentence-transformers >= 5.4 layout
                module = importlib.import_module(
                    "sentence_transformers.sentence_transformer.losses"
                )
            except ImportError:  # older releases
                module = importlib.import_module("sentence_transformers.losses")
        kwargs = {"margin": float(margin)} if has_margin else {}
        method = getattr(getattr(module, name)(model=None, **kwargs), method_name)
        _ST_CACHE[key] = method
    return method


def sentence_transformers_loss(labels, embeddings, margin=1.0, rule="semihard"):
    """sentence-transformers' loss of `rule` (``BatchSemiHardTripletLoss`` by default).

    The semi-hard one has TFA's definition (it is a port of it), and so do the hard ones of
    ``triplet_hard_loss``; batch-all is the library's "batch-all" rule. Note
    sentence-transformers' own default margin is 5; here it is ``margin``.
    """
    import torch

    y, x = _torch_inputs(labels, embeddings, requires_grad=False)
    with torch.no_grad():
        loss = _st_loss_object(margin, rule)(y, x)
    return float(loss.item())


def sentence_transformers_loss_and_grad(labels, embeddings, margin=1.0, rule="semihard"):
    """sentence-transformers loss and d loss / d embeddings (torch autograd)."""
    y, x = _torch_inputs(labels, embeddings, requires_grad=True)
    loss = _st_loss_object(margin, rule)(y, x)
    loss.backward()
    return float(loss.item()), x.grad.detach().numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------
# pytorch-metric-learning
# --------------------------------------------------------------------------

_PML_CACHE: dict = {}


def _pml_objects(margin, rule="semihard"):
    """(miner, loss): for "semihard" with pml's default distance (normalised embeddings), as
    users pair them; for "all-semihard" both with LpDistance(normalize_embeddings=False), which
    makes them the library's "all-semihard" rule."""
    key = (float(margin), rule)
    objs = _PML_CACHE.get(key)
    if objs is None:
        from pytorch_metric_learning import distances, losses, miners

        kwargs = {}
        if rule == "all-semihard":
            kwargs["distance"] = distances.LpDistance(normalize_embeddings=False)
        miner = miners.TripletMarginMiner(
            margin=float(margin), type_of_triplets="semihard", **kwargs
        )
        loss_fn = losses.TripletMarginLoss(margin=float(margin), **kwargs)
        objs = (miner, loss_fn)
        _PML_CACHE[key] = objs
    return objs


def pml_loss(labels, embeddings, margin=1.0, rule="semihard"):
    """pytorch-metric-learning: TripletMarginMiner("semihard") + TripletMarginLoss.

    ``indices = miner(embeddings, labels); loss(embeddings, labels, indices)``.

    With rule "semihard", NOT the TFA definition, and not expected to match it:

    * distance: PML's default ``LpDistance(normalize_embeddings=True, p=2)``,
      so embeddings are L2-normalised before distances are taken (identical to
      TFA only if the inputs are already unit-norm);
    * mining: *every* triplet (a, p, n) with ``0 < d(a,n) - d(a,p) <= margin``
      is kept, rather than one semi-hard negative per (a, p) pair with a
      fall-back to the hardest (largest-distance) negative when none exists;
    * reduction: ``AvgNonZeroReducer``, the mean of relu(d_ap - d_an + margin)
      over the mined triplets whose loss is > 0 (TFA: sum over positive pairs
      divided by the number of positive pairs).
    * cost: the miner enumerates all B * P * N triplets (a B x B x B mask when
      B^3 < 2^31, a Python loop over anchors otherwise).

    With rule "all-semihard" (no normalisation), the last three points are the definition of
    the library's "all-semihard" rule: the two agree.
    """
    import torch

    y, x = _torch_inputs(labels, embeddings, requires_grad=False)
    miner, loss_fn = _pml_objects(margin, rule)
    with torch.no_grad():
        indices = miner(x, y)
        loss = loss_fn(x, y, indices)
    return float(loss.item())


def pml_loss_and_grad(labels, embeddings, margin=1.0, rule="semihard"):
    """PML loss and d loss / d embeddings (torch autograd; mining is no-grad)."""
    y, x = _torch_inputs(labels, embeddings, requires_grad=True)
    miner, loss_fn = _pml_objects(margin, rule)
    indices = miner(x, y)
    loss = loss_fn(x, y, indices)
    if loss.requires_grad:
        loss.backward()
        grad = x.grad.detach().numpy().astype(np.float32, copy=False)
    else:  # no triplet mined: loss is a constant zero
        grad = np.zeros(x.shape, dtype=np.float32)
    return float(loss.item()), grad


# --------------------------------------------------------------------------
# registry / availability
# --------------------------------------------------------------------------

_FUNCTIONS = {
    "tfa": (tfa_loss, tfa_loss_and_grad),
    "sentence_transformers": (sentence_transformers_loss, sentence_transformers_loss_and_grad),
    "pml": (pml_loss, pml_loss_and_grad),
}

_REQUIRES = {
    "tfa": ("tensorflow", "tensorflow_addons"),
    "sentence_transformers": ("torch", "sentence_transformers"),
    "pml": ("torch", "pytorch_metric_learning"),
}


def prepare(peer, rule, margin=1.0):
    """Import the peer's framework and build its loss objects, so that a first call that follows
    times the framework's first run (graph tracing, kernel selection), not its import."""
    if peer == "tfa":
        _import_tf()
    elif peer == "sentence_transformers":
        _st_loss_object(margin, rule)
    else:
        _pml_objects(margin, rule)


def loss(peer, rule, labels, embeddings, margin=1.0):
    """The loss of `rule` by `peer` (a key of `CALLS`), as a float."""
    return _FUNCTIONS[peer][0](labels, embeddings, margin, rule=rule)


def loss_and_grad(peer, rule, labels, embeddings, margin=1.0):
    """(loss, d loss / d embeddings) of `rule` by `peer`, by the framework's autograd."""
    return _FUNCTIONS[peer][1](labels, embeddings, margin, rule=rule)


def available():
    """Return ``{peer: (ok, reason)}``; imports each peer's packages to check.

    ``reason`` lists the versions found, or the import error.
    """
    out = {}
    for name, mods in _REQUIRES.items():
        versions = []
        try:
            for mod in mods:
                if mod == "tensorflow" or mod == "tensorflow_addons":
                    tf, tfa = _import_tf()
                    m = tf if mod == "tensorflow" else tfa
                else:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore")
                        m = __import__(mod)
                versions.append(f"{mod} {getattr(m, '__version__', '?')}")
            prepare(name, "semihard")
            out[name] = (True, ", ".join(versions))
        except Exception as exc:  # ImportError, or a broken install
            out[name] = (False, f"{type(exc).__name__}: {exc}")
    return out


# --------------------------------------------------------------------------
# command line: availability + agreement check
# --------------------------------------------------------------------------


def library_rule(rule):
    """(the library's rule name, soft) of a benchmark rule: "hard-soft" is "hard", soft=True."""
    return ("hard", True) if rule == "hard-soft" else (rule, False)


def library_functions(rule):
    """semihard_numba's (loss, loss_and_grad) of a benchmark rule, called as
    ``f(labels, embeddings, margin, backend=...)``: what the peers are checked against."""
    import functools

    import semihard_numba

    name, soft = library_rule(rule)
    stem = f"triplet_{name.replace('-', '_')}_loss"
    keywords = {"soft": True} if soft else {}
    return tuple(
        functools.partial(getattr(semihard_numba, stem + suffix), **keywords)
        for suffix in ("", "_and_grad")
    )


def _check(margin):
    avail = available()
    for name, (ok, why) in avail.items():
        print(f"{name:22s} {'yes' if ok else 'NO '}  {why}")
    labels, emb = clustered_batch(64, 4, 16)
    for name, calls in CALLS.items():
        if not avail[name][0]:
            continue
        for rule in calls:
            ref, ref_grad = library_functions(rule)[1](labels, emb, margin, backend="cpu")
            value, grad = loss_and_grad(name, rule, labels, emb, margin)
            print(
                f"{name:22s} {rule:13s} loss={value:.7f}  cpu={float(ref):.7f}  "
                f"|dloss|={abs(value - ref):.1e}  max|dgrad|={np.max(np.abs(grad - ref_grad)):.1e}"
                + ("  (different definition)" if (name, rule) == ("pml", "semihard") else "")
            )


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--margin", type=float, default=1.0)
    _check(p.parse_args(argv).margin)


if __name__ == "__main__":
    main()

"""Reference ("peer") implementations of semi-hard triplet loss, for benchmarks.

Every peer takes NumPy inputs

    labels      int64,   shape (B,)
    embeddings  float32, shape (B, D)
    margin      float (default 1.0)

and returns the loss as a Python ``float``; the ``*_loss_and_grad`` variants
return ``(loss, grad)`` with ``grad`` = d loss / d embeddings as a float32
NumPy array of shape (B, D), computed by the framework's autograd.

Peers
-----
``tfa``                    tensorflow_addons.losses.triplet_semihard_loss,
                           distance_metric="L2" (TFA's default).  This is the
                           definition semihard_numba reproduces.
``sentence_transformers``  sentence_transformers BatchSemiHardTripletLoss
                           (euclidean distance, its default), its
                           ``batch_semi_hard_triplet_loss`` called on torch
                           tensors without a SentenceTransformer model.  Same
                           definition as TFA (port of it); agrees to float32
                           rounding.
``pml``                    pytorch-metric-learning TripletMarginMiner
                           ("semihard") + TripletMarginLoss.  DIFFERENT
                           semantics, see :func:`pml_loss`; not expected to
                           match TFA.

All heavy imports (tensorflow, torch, ...) are done lazily inside the
functions, so this module imports with none of those packages installed.
Everything runs on the CPU.

Run ``python bench/peers.py`` for an availability report and a small
agreement check; ``python -m bench --impl tfa`` times a peer.
"""

from __future__ import annotations

import os
import warnings

import numpy as np

from semihard_numba._batches import clustered_batch

__all__ = [
    "PEERS",
    "available",
    "tfa_loss",
    "tfa_loss_and_grad",
    "sentence_transformers_loss",
    "sentence_transformers_loss_and_grad",
    "pml_loss",
    "pml_loss_and_grad",
    "tfa_estimated_peak_bytes",
]


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


def _tfa_value_and_grad_fn(margin):
    tf, tfa = _import_tf()
    key = ("vg", float(margin))
    fn = _TF_CACHE.get(key)
    if fn is None:

        @tf.function
        def fn(y, x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                loss = tfa.losses.triplet_semihard_loss(
                    y, x, margin=float(margin), distance_metric="L2"
                )
            return loss, tape.gradient(loss, x)

        _TF_CACHE[key] = fn
    return fn


def tfa_loss(labels, embeddings, margin=1.0):
    """``tfa.losses.triplet_semihard_loss(y_true, y_pred, margin, "L2")``.

    TFA 0.23 signature: ``triplet_semihard_loss(y_true, y_pred, margin=1.0,
    distance_metric="L2")``; the function is itself a ``tf.function`` (graph
    mode).  Memory is O(B^3): it tiles the B x B distance matrix B times
    (several float32 (B*B, B) tensors), see :func:`tfa_estimated_peak_bytes`.
    """
    labels, embeddings = _as_inputs(labels, embeddings)
    tf, tfa = _import_tf()
    with tf.device("/CPU:0"):
        loss = tfa.losses.triplet_semihard_loss(
            tf.constant(labels),
            tf.constant(embeddings),
            margin=float(margin),
            distance_metric="L2",
        )
    return float(loss.numpy())


def tfa_loss_and_grad(labels, embeddings, margin=1.0):
    """TFA loss and d loss / d embeddings (tf.GradientTape, in a tf.function)."""
    labels, embeddings = _as_inputs(labels, embeddings)
    tf, _ = _import_tf()
    fn = _tfa_value_and_grad_fn(margin)
    with tf.device("/CPU:0"):
        loss, grad = fn(tf.constant(labels), tf.constant(embeddings))
    return float(loss.numpy()), np.asarray(grad.numpy(), dtype=np.float32)


def tfa_estimated_peak_bytes(batch_size: int) -> int:
    """Rough peak-memory estimate for TFA's loss at batch size B (forward).

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


def _st_loss_object(margin):
    """A BatchSemiHardTripletLoss with no model (model=None).

    ``__init__`` only stores ``model``, ``margin`` and ``distance_metric``, so
    passing ``model=None`` builds the real loss object without a
    SentenceTransformer; ``batch_semi_hard_triplet_loss(labels, embeddings)``
    never touches the model.  The distance is the class default,
    ``BatchHardTripletLossDistanceFunction.euclidean_distance`` (spelled
    ``eucledian_distance`` in older releases), i.e. plain L2 like TFA's "L2".
    """
    key = float(margin)
    obj = _ST_CACHE.get(key)
    if obj is None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:  # sentence-transformers >= 5.4 layout
                from sentence_transformers.sentence_transformer.losses import (
                    BatchSemiHardTripletLoss,
                )
            except ImportError:  # older releases
                from sentence_transformers.losses import BatchSemiHardTripletLoss
        obj = BatchSemiHardTripletLoss(model=None, margin=float(margin))
        _ST_CACHE[key] = obj
    return obj


def sentence_transformers_loss(labels, embeddings, margin=1.0):
    """sentence-transformers ``BatchSemiHardTripletLoss.batch_semi_hard_triplet_loss``.

    Same definition as TFA's "L2" semi-hard loss (it is a port of it).  Note
    sentence-transformers' own default margin is 5; here it is ``margin``.
    """
    import torch

    y, x = _torch_inputs(labels, embeddings, requires_grad=False)
    with torch.no_grad():
        loss = _st_loss_object(margin).batch_semi_hard_triplet_loss(y, x)
    return float(loss.item())


def sentence_transformers_loss_and_grad(labels, embeddings, margin=1.0):
    """sentence-transformers loss and d loss / d embeddings (torch autograd)."""
    y, x = _torch_inputs(labels, embeddings, requires_grad=True)
    loss = _st_loss_object(margin).batch_semi_hard_triplet_loss(y, x)
    loss.backward()
    return float(loss.item()), x.grad.detach().numpy().astype(np.float32, copy=False)


# --------------------------------------------------------------------------
# pytorch-metric-learning
# --------------------------------------------------------------------------

_PML_CACHE: dict = {}


def _pml_objects(margin):
    key = float(margin)
    objs = _PML_CACHE.get(key)
    if objs is None:
        from pytorch_metric_learning import losses, miners

        miner = miners.TripletMarginMiner(margin=float(margin), type_of_triplets="semihard")
        loss_fn = losses.TripletMarginLoss(margin=float(margin))
        objs = (miner, loss_fn)
        _PML_CACHE[key] = objs
    return objs


def pml_loss(labels, embeddings, margin=1.0):
    """pytorch-metric-learning: TripletMarginMiner("semihard") + TripletMarginLoss.

    ``indices = miner(embeddings, labels); loss(embeddings, labels, indices)``.

    NOT the TFA definition, and not expected to match it:

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
    """
    import torch

    y, x = _torch_inputs(labels, embeddings, requires_grad=False)
    miner, loss_fn = _pml_objects(margin)
    with torch.no_grad():
        indices = miner(x, y)
        loss = loss_fn(x, y, indices)
    return float(loss.item())


def pml_loss_and_grad(labels, embeddings, margin=1.0):
    """PML loss and d loss / d embeddings (torch autograd; mining is no-grad)."""
    y, x = _torch_inputs(labels, embeddings, requires_grad=True)
    miner, loss_fn = _pml_objects(margin)
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

PEERS = {
    "tfa": (tfa_loss, tfa_loss_and_grad),
    "sentence_transformers": (sentence_transformers_loss, sentence_transformers_loss_and_grad),
    "pml": (pml_loss, pml_loss_and_grad),
}

_REQUIRES = {
    "tfa": ("tensorflow", "tensorflow_addons"),
    "sentence_transformers": ("torch", "sentence_transformers"),
    "pml": ("torch", "pytorch_metric_learning"),
}


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
            if name == "sentence_transformers":
                _st_loss_object(1.0)
            elif name == "pml":
                _pml_objects(1.0)
            out[name] = (True, ", ".join(versions))
        except Exception as exc:  # ImportError, or a broken install
            out[name] = (False, f"{type(exc).__name__}: {exc}")
    return out


# --------------------------------------------------------------------------
# command line: availability + agreement check, or timing
# --------------------------------------------------------------------------


def _check(margin):
    avail = available()
    for name, (ok, why) in avail.items():
        print(f"{name:22s} {'yes' if ok else 'NO '}  {why}")
    labels, emb = clustered_batch(64, 4, 16)
    res = {}
    for name, (loss_fn, vg_fn) in PEERS.items():
        if avail[name][0]:
            l1 = loss_fn(labels, emb, margin)
            l2, g = vg_fn(labels, emb, margin)
            res[name] = (l1, l2, g)
            print(
                f"{name:22s} loss={l1:.7f}  (loss_and_grad: {l2:.7f}, |grad|={np.linalg.norm(g):.6f})"
            )
    if "tfa" in res and "sentence_transformers" in res:
        a, b = res["tfa"], res["sentence_transformers"]
        print(
            f"tfa vs sentence_transformers: |dloss|={abs(a[0] - b[0]):.3e}  "
            f"max|dgrad|={np.max(np.abs(a[2] - b[2])):.3e}"
        )


def main(argv=None):
    import argparse

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--margin", type=float, default=1.0)
    _check(p.parse_args(argv).margin)


if __name__ == "__main__":
    main()

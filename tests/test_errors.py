"""One error per bad input, whichever way the loss is reached: the same table of bad arguments
against every public function, every host backend, "cuda" (under the simulator or on a GPU, host
and device input) and the PyTorch modules. Each must raise the same exception type, with a
message that names the argument.

The simulator run includes this file (README: NUMBA_ENABLE_CUDASIM=1 python -m pytest ...).
"""

import numpy as np
import pytest

import semihard_numba as sn
from conftest import CUDA_TESTS, TORCH_TESTS
from test_inputs import FUNCTIONS, LABELS, X

NAN_ROW = X.copy()
NAN_ROW[3, 1] = np.nan

# (id, keyword arguments that replace the good ones, exception type, a word of the message)
BAD = [
    ("labels-2d", dict(labels=np.zeros((6, 2))), ValueError, "labels"),
    ("labels-length", dict(labels=LABELS[:5]), ValueError, "labels"),
    ("labels-nan", dict(labels=np.array([0, 0, 1, 1, np.nan, 2])), ValueError, "labels"),
    ("labels-strings", dict(labels=np.array(list("aabbcc"))), TypeError, "labels"),
    ("labels-bool", dict(labels=LABELS > 0), TypeError, "labels"),
    ("embeddings-1d", dict(embeddings=X[:, 0]), ValueError, "embeddings"),
    ("embeddings-3d", dict(embeddings=X[:, :, None]), ValueError, "embeddings"),
    ("embeddings-D0", dict(embeddings=X[:, :0]), ValueError, "embeddings"),
    ("embeddings-B0", dict(labels=LABELS[:0], embeddings=X[:0]), ValueError, "embeddings"),
    ("embeddings-complex", dict(embeddings=X + 1j), TypeError, "embeddings"),
    ("embeddings-nan", dict(embeddings=NAN_ROW), ValueError, "embeddings"),
    ("margin-string", dict(margin="1.0"), TypeError, "margin"),
    ("margin-array", dict(margin=np.array([1.0])), TypeError, "margin"),
    ("margin-bool", dict(margin=True), TypeError, "margin"),
    ("margin-nan", dict(margin=np.nan), ValueError, "margin"),
    ("metric-unknown", dict(distance_metric="cosine"), ValueError, "distance_metric"),
    ("backend-unknown", dict(backend="gpu"), ValueError, "backend"),
    ("check_finite-string", dict(check_finite="no"), TypeError, "check_finite"),
    ("anchors-out-of-range", dict(anchors=[0, 6]), IndexError, "anchors"),
    ("anchors-float", dict(anchors=[0.0, 1.0]), IndexError, "anchors"),
    ("anchors-repeated", dict(anchors=[1, 1]), ValueError, "anchors"),
    ("anchors-2d", dict(anchors=[[0, 1]]), IndexError, "anchors"),
    ("anchors-short-mask", dict(anchors=np.ones(5, dtype=bool)), ValueError, "anchors"),
    ("reduction-unknown", dict(reduction="avg"), ValueError, "reduction"),
    ("return_stats-string", dict(return_stats="yes"), TypeError, "return_stats"),
]
LOSS_ONLY = {"reduction", "return_stats"}  # mine_semihard has neither


def _cases(function):
    for name, kwargs, error, word in BAD:
        if function is sn.mine_semihard and word in LOSS_ONLY:
            continue
        yield pytest.param(kwargs, error, word, id=name)


def _call(function, backend, kwargs):
    args = {**dict(labels=LABELS, embeddings=X, backend=backend), **kwargs}
    if args["backend"] == "cuda-device":  # the embeddings as a device array
        from numba import cuda

        embeddings = np.asarray(args["embeddings"])
        args.update(backend="cuda", embeddings=cuda.to_device(np.ascontiguousarray(embeddings)))
    return function(**args)


BACKENDS = ["python", "numpy", "cpu"] + (["cuda", "cuda-device"] if CUDA_TESTS else [])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "function, kwargs, error, word",
    [
        pytest.param(f, *case.values, id=f"{f.__name__}-{case.id}")
        for f in FUNCTIONS
        for case in _cases(f)
    ],
)
def test_every_backend_raises_the_same_error_naming_the_argument(
    function, backend, kwargs, error, word
):
    with pytest.raises(error, match=word):
        _call(function, backend, kwargs)


# The modules take (labels, embeddings) tensors and margin, distance_metric, reduction and
# backend at construction; strings, anchors, check_finite and return_stats do not reach them.
MODULE_ARGUMENTS = {"labels", "embeddings", "margin", "distance_metric", "reduction", "backend"}


def _module_cases():
    for name, kwargs, error, word in BAD:
        values = list(kwargs.values())
        if set(kwargs) <= MODULE_ARGUMENTS and not any(
            isinstance(v, np.ndarray) and v.dtype.kind in "USb" for v in values
        ):
            yield pytest.param(kwargs, error, word, id=name)


@pytest.mark.skipif(not TORCH_TESTS, reason="PyTorch is not installed")
@pytest.mark.parametrize("rule", ["semihard", "hard", "batch-all", "all-semihard"])
@pytest.mark.parametrize("kwargs, error, word", list(_module_cases()))
def test_the_pytorch_modules_raise_the_same_errors(rule, kwargs, error, word):
    import torch

    from semihard_numba.torch import TripletLoss

    args = {**dict(labels=LABELS, embeddings=X), **kwargs}
    options = {
        k: args.pop(k) for k in ("margin", "distance_metric", "reduction", "backend") if k in args
    }
    embeddings = torch.tensor(
        args["embeddings"], requires_grad=args["embeddings"].dtype.kind == "f"
    )
    with pytest.raises(error, match=word):
        TripletLoss(rule, **options)(torch.as_tensor(args["labels"]), embeddings)

"""The public functions: validate, dispatch, return NumPy results in the caller's precision."""

import numpy as np

from ._dispatch import resolve
from ._inputs import check_flag, check_reduction
from ._rules import ALL_SEMIHARD, BATCH_ALL, HARD, SEMIHARD, Rule

_PARAMETERS = """
    Parameters
    ----------
    labels : array_like, shape (B,) or (B, 1)
        Integer or float class ids, compared for equality. May live on the host or on a GPU.
    embeddings : array_like or GPU array, shape (B, D)
        float32 and float64 are computed in their own precision; float16 is computed in float32
        (as TFA does); integers are promoted to float64. An object exposing
        ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensor after ``.detach()``, Numba device
        array) stays on the GPU with backend "cuda" or "auto"; the host backends copy it.
    margin : float, default 1.0
        The margin of the hinge max(margin + D[a, p] - D[a, n], 0).
    distance_metric : {"L2", "squared-L2", "angular"} or callable, default "L2"
        As TFA: Euclidean distance, its square, or 1 - cosine similarity. A callable takes the
        (B, D) embeddings and returns the (B, B) distance matrix (the loss only: it has no
        gradient); on "cuda" it receives a Numba device array and returns a (B, B) device array
        (a NumPy array is copied over).
    backend : {"auto", "cpu", "cuda", "numpy", "python"}, default "auto"
        "cpu" is the compiled Numba kernel, "cuda" its numba.cuda twin, "numpy" the vectorized
        tensor algebra of the reference implementations (O(B^3) memory), "python" the readable
        loops. All give the same numbers. "auto" takes "cuda" for GPU arrays and for host batches
        of at least SEMIHARD_NUMBA_CUDA_MIN_BATCH rows when a GPU is usable, else "cpu".
    check_finite : bool, default True
        Raise ValueError on NaN or infinite embeddings; False skips the check.
"""

_ANCHORS = """    anchors : None, slice, integer indices or boolean mask of B entries, default None
        The rows that act as anchors (all by default); positives and negatives come from every
        row. Taken as a set, in increasing order. Negative indices count from the end, as in
        NumPy indexing: -1 is the last row.
"""

_REDUCTION = """    reduction : {"mean", "sum", "none"}, default "mean"
        "mean": the anchors' sum divided by the rule's denominator (`TripletStats.denominator`);
        "sum": the sum, which adds up exactly over a partition of the anchors; "none" (the losses
        only): one value per pair (a, p) in `mine_semihard`'s order, the sum over its negatives
        for "batch-all" and "all-semihard", or one per anchor for "hard".
"""

_STATS = """    return_stats : bool, default False
        Also return the `TripletStats` of the same pass (pairs, denominator, active, semihard).
"""

_RETURNS = """    Returns
    -------
    loss : numpy scalar of the embeddings' float dtype (float64 for integer input)
    grad : (`_and_grad` only) array of the embeddings' shape and dtype: d loss / d embeddings
        (a Numba device array for GPU input on "cuda")
    stats : (with return_stats) TripletStats
"""


_SOFT = """    soft : bool, default False
        The soft-margin form log1p(exp(hp - hn)), in which the margin plays no part.
"""

_MINED = """    Returns
    -------
    MiningResult
        Arrays anchor, positive, negative, semihard, loss with one entry per ordered positive
        pair, ordered by anchor then positive (Numba device arrays for GPU input on "cuda").
        The mean of `loss` is `triplet_semihard_loss`.
"""


def _document(function=None, extra="", stats=True, returns=_RETURNS):
    """Fill the docstring's {parameters} and {returns}; `extra` parameters go after margin."""
    if function is None:
        return lambda f: _document(f, extra, stats, returns)
    parameters = _PARAMETERS.replace("    distance_metric :", extra + "    distance_metric :")
    parameters += _ANCHORS + (_REDUCTION + _STATS if stats else "")
    doc = function.__doc__.replace("    {parameters}\n", parameters)
    function.__doc__ = doc.replace("    {returns}\n", returns)
    return function


def _evaluate(
    name,
    want_grad,
    labels,
    embeddings,
    margin,
    distance_metric,
    backend,
    check_finite,
    anchors,
    reduction,
    return_stats,
    soft=False,
):
    """What every loss function does with its arguments. Each passes them as ``**locals()``
    from a body that assigns nothing, so its locals are exactly its parameters."""
    check_reduction(reduction, allow_none=not want_grad)
    if want_grad and callable(distance_metric):
        raise TypeError(
            "the gradient needs a named distance_metric ('L2', 'squared-L2', 'angular'): a "
            "callable metric has no gradient"
        )
    check_flag("return_stats", return_stats)
    check_flag("soft", soft)
    implementation, batch = resolve(
        labels, embeddings, margin, distance_metric, backend, check_finite, anchors
    )
    rule = Rule(name, soft=bool(soft))
    loss, stats, grad = implementation.evaluate(batch, rule, want_grad, reduction)
    if reduction == "none":  # per pair or per anchor, in the output dtype (device arrays stay)
        result = [
            loss.astype(batch.out_dtype, copy=False) if isinstance(loss, np.ndarray) else loss
        ]
    else:
        result = [batch.out_dtype.type(loss)]
    if want_grad:
        if isinstance(grad, np.ndarray):  # device backends return it in the output dtype
            grad = grad.astype(batch.out_dtype, copy=False)
        result.append(grad)
    if return_stats:
        result.append(stats)
    return tuple(result) if len(result) > 1 else result[0]


@_document
def triplet_semihard_loss(
    labels,
    embeddings,
    margin=1.0,
    distance_metric="L2",
    backend="auto",
    check_finite=True,
    anchors=None,
    reduction="mean",
    return_stats=False,
):
    """Triplet loss with online semi-hard negative mining, as `tfa.losses.triplet_semihard_loss`.

    For every ordered pair (a, p), a != p, with the same label, the negative is the closest n of
    another label with D[a, n] > D[a, p]; if there is none, a's farthest negative. The loss is the
    mean over those pairs of max(margin + D[a, p] - D[a, n], 0).

    {parameters}
    {returns}
    Notes
    -----
    A batch without any positive pair gives 0.0, where TFA returns NaN (0 / 0).
    Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face Recognition and
    Clustering", CVPR 2015; TFA's choice of one negative per pair is its own (see the README).

    Examples
    --------
    >>> import numpy as np, semihard_numba
    >>> labels = np.array([0, 0, 1, 1])
    >>> x = np.array([[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [3.0, 0.0]], dtype=np.float32)
    >>> round(float(semihard_numba.triplet_semihard_loss(labels, x)), 6)
    0.542893
    """
    return _evaluate(SEMIHARD, False, **locals())


@_document
def triplet_semihard_loss_and_grad(
    labels,
    embeddings,
    margin=1.0,
    distance_metric="L2",
    backend="auto",
    check_finite=True,
    anchors=None,
    reduction="mean",
    return_stats=False,
):
    """The loss of `triplet_semihard_loss` and its gradient with respect to the embeddings.

    The gradient is what TensorFlow's automatic differentiation gives for TFA's loss: a triplet on
    the hinge still passes gradient, negatives tied at the chosen distance share it equally, and
    distances that are exactly 0 pass none (so duplicate points give no NaN).

    {parameters}
    {returns}
    """
    return _evaluate(SEMIHARD, True, **locals())


@_document(extra=_SOFT)
def triplet_hard_loss(
    labels,
    embeddings,
    margin=1.0,
    soft=False,
    distance_metric="L2",
    backend="auto",
    check_finite=True,
    anchors=None,
    reduction="mean",
    return_stats=False,
):
    """Batch-hard triplet loss, as `tfa.losses.triplet_hard_loss`.

    Per anchor a: its hardest positive hp (the largest D[a, p], p != a of its label) and its
    hardest negative hn (the smallest D[a, n] of another label). The loss is the mean over all B
    anchors of max(hp - hn + margin, 0), or with soft=True of log1p(exp(hp - hn)), which ignores
    the margin (Hermans, Beyer, Leibe, "In Defense of the Triplet Loss for Person
    Re-Identification", 2017).

    {parameters}
    {returns}
    Notes
    -----
    TFA's edge values are kept: an anchor without positive takes hp = the smallest entry of its
    row (0 on the diagonal for "L2"), so it contributes max(margin - hn, 0); an anchor without
    negative takes hn = the largest entry of its row; B = 1 gives the margin (log 2 when soft);
    a batch of all-distinct labels gives a non-zero loss. One deliberate difference: TFA's float32
    log1p(exp(z)) overflows to inf from z ~ 89 on; the soft loss here is computed without
    overflow and stays finite.

    Examples
    --------
    >>> import semihard_numba
    >>> float(semihard_numba.triplet_hard_loss([0, 0], [[0.0, 1.0], [1.0, 0.0]]))
    1.0
    """
    return _evaluate(HARD, False, **locals())


@_document(extra=_SOFT)
def triplet_hard_loss_and_grad(
    labels,
    embeddings,
    margin=1.0,
    soft=False,
    distance_metric="L2",
    backend="auto",
    check_finite=True,
    anchors=None,
    reduction="mean",
    return_stats=False,
):
    """The loss of `triplet_hard_loss` and its gradient with respect to the embeddings.

    As TensorFlow's autodiff gives it: tied hardest positives (or negatives) share the gradient
    equally, a loss exactly on the hinge passes it, distances of exactly 0 pass none.

    {parameters}
    {returns}
    """
    return _evaluate(HARD, True, **locals())


@_document
def triplet_batch_all_loss(
    labels,
    embeddings,
    margin=1.0,
    distance_metric="L2",
    backend="auto",
    check_finite=True,
    anchors=None,
    reduction="mean",
    return_stats=False,
):
    """Batch-all triplet loss, as sentence-transformers' `BatchAllTripletLoss` computes it.

    Over every triplet (a, p, n), a != p with the same label and n of another label, the sum of
    max(D[a, p] - D[a, n] + margin, 0), divided by (the number of those losses above 1e-16) +
    1e-16: 0.0 when no loss is positive. sentence-transformers' default margin is 5; ours is 1.

    {parameters}
    {returns}
    Examples
    --------
    >>> import semihard_numba
    >>> labels, x = [0, 0, 1], [[0.0], [1.0], [1.5]]
    >>> round(float(semihard_numba.triplet_batch_all_loss(labels, x)), 6)  # (0.5 + 2.5) / 2
    1.5
    """
    return _evaluate(BATCH_ALL, False, **locals())


@_document
def triplet_batch_all_loss_and_grad(
    labels,
    embeddings,
    margin=1.0,
    distance_metric="L2",
    backend="auto",
    check_finite=True,
    anchors=None,
    reduction="mean",
    return_stats=False,
):
    """The loss of `triplet_batch_all_loss` and its gradient with respect to the embeddings.

    As PyTorch's autograd gives it: every triplet whose loss is >= 0 passes gradient (the count in
    the denominator is a constant).

    {parameters}
    {returns}
    """
    return _evaluate(BATCH_ALL, True, **locals())


@_document
def triplet_all_semihard_loss(
    labels,
    embeddings,
    margin=1.0,
    distance_metric="L2",
    backend="auto",
    check_finite=True,
    anchors=None,
    reduction="mean",
    return_stats=False,
):
    """FaceNet's semi-hard triplets, all of them, as pytorch-metric-learning computes them.

    The triplets (a, p, n) with 0 < D[a, n] - D[a, p] <= margin (`TripletMarginMiner` with
    type_of_triplets="semihard"), loss max(D[a, p] - D[a, n] + margin, 0) (`TripletMarginLoss`),
    averaged over those with a loss > 0; 0.0 when there are none. One margin serves the choice
    and the loss, and the embeddings are used as given (pytorch-metric-learning normalises them
    by default, and its miner and loss have different default margins).

    {parameters}
    {returns}
    Examples
    --------
    >>> import semihard_numba
    >>> labels, x = [0, 0, 1, 2], [[0.0], [1.0], [1.5], [3.0]]
    >>> round(float(semihard_numba.triplet_all_semihard_loss(labels, x)), 6)  # only (0, 1, 2)
    0.5
    """
    return _evaluate(ALL_SEMIHARD, False, **locals())


@_document
def triplet_all_semihard_loss_and_grad(
    labels,
    embeddings,
    margin=1.0,
    distance_metric="L2",
    backend="auto",
    check_finite=True,
    anchors=None,
    reduction="mean",
    return_stats=False,
):
    """The loss of `triplet_all_semihard_loss` and its gradient with respect to the embeddings.

    As PyTorch's autograd gives it: the triplets with a loss > 0 pass gradient, the choice of
    triplets and the count are constants.

    {parameters}
    {returns}
    """
    return _evaluate(ALL_SEMIHARD, True, **locals())


@_document(stats=False, returns=_MINED)
def mine_semihard(
    labels,
    embeddings,
    margin=1.0,
    distance_metric="L2",
    backend="auto",
    check_finite=True,
    anchors=None,
):
    """The triplets TFA's rule picks: one negative for every ordered positive pair.

    {parameters}
    {returns}
    """
    implementation, batch = resolve(
        labels, embeddings, margin, distance_metric, backend, check_finite, anchors
    )
    return implementation.mine(batch)


# rule -> (loss, loss and gradient): what the framework integrations call for a rule
RULE_FUNCTIONS = {
    SEMIHARD: (triplet_semihard_loss, triplet_semihard_loss_and_grad),
    HARD: (triplet_hard_loss, triplet_hard_loss_and_grad),
    BATCH_ALL: (triplet_batch_all_loss, triplet_batch_all_loss_and_grad),
    ALL_SEMIHARD: (triplet_all_semihard_loss, triplet_all_semihard_loss_and_grad),
}

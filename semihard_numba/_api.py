"""The public functions: validate, dispatch, return NumPy results in the caller's precision."""

import numpy as np

from ._dispatch import resolve

_COMMON_PARAMETERS = """
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
        (B, D) embeddings and returns the (B, B) distance matrix; on "cuda" it receives a Numba
        device array and returns a (B, B) device array (a NumPy array is copied over).
    backend : {"auto", "cpu", "cuda", "numpy", "python"}, default "auto"
        "cpu" is the compiled Numba kernel, "cuda" its numba.cuda twin, "numpy" the vectorized
        port of TFA's tensor algebra (O(B^3) memory), "python" the readable loop of the post. All
        give the same numbers. "auto" takes "cuda" for GPU arrays and for host batches of at least
        SEMIHARD_NUMBA_CUDA_MIN_BATCH rows when a GPU is usable, else "cpu".
    check_finite : bool, default True
        Raise ValueError on NaN or infinite embeddings; False skips the check.
"""


def _with_parameters(function):
    function.__doc__ = function.__doc__.replace("    {parameters}\n", _COMMON_PARAMETERS)
    return function


@_with_parameters
def triplet_semihard_loss(
    labels, embeddings, margin=1.0, distance_metric="L2", backend="auto", check_finite=True
):
    """Triplet loss with online semi-hard negative mining, as `tfa.losses.triplet_semihard_loss`.

    For every ordered pair (a, p), a != p, with the same label, the negative is the closest n of
    another label with D[a, n] > D[a, p]; if there is none, a's farthest negative. The loss is the
    mean over those pairs of max(margin + D[a, p] - D[a, n], 0).

    {parameters}
    Returns
    -------
    numpy scalar of the embeddings' float dtype (float64 for integer input).

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
    implementation, batch = resolve(
        labels, embeddings, margin, distance_metric, backend, check_finite
    )
    return batch.out_dtype.type(implementation.loss(batch))


@_with_parameters
def triplet_semihard_loss_and_grad(
    labels, embeddings, margin=1.0, distance_metric="L2", backend="auto", check_finite=True
):
    """The loss of `triplet_semihard_loss` and its gradient with respect to the embeddings.

    The gradient is what TensorFlow's automatic differentiation gives for TFA's loss: a triplet on
    the hinge still passes gradient, negatives tied at the chosen distance share it equally, and
    distances that are exactly 0 pass none (so duplicate points give no NaN). A callable
    distance_metric has no gradient and raises TypeError.

    {parameters}
    Returns
    -------
    (loss, grad) : numpy scalar, and an array of the embeddings' shape in the output dtype (a
        Numba device array for GPU input on "cuda").
    """
    if callable(distance_metric):
        raise TypeError(
            "triplet_semihard_loss_and_grad needs a named distance_metric ('L2', 'squared-L2', "
            "'angular'): a callable metric has no gradient"
        )
    implementation, batch = resolve(
        labels, embeddings, margin, distance_metric, backend, check_finite
    )
    loss, grad = implementation.loss_and_grad(batch)
    if isinstance(grad, np.ndarray):  # device backends return the gradient in the output dtype
        grad = grad.astype(batch.out_dtype, copy=False)
    return batch.out_dtype.type(loss), grad


@_with_parameters
def mine_semihard(
    labels, embeddings, margin=1.0, distance_metric="L2", backend="auto", check_finite=True
):
    """The triplets TFA's rule picks: one negative for every ordered positive pair.

    {parameters}
    Returns
    -------
    MiningResult
        Arrays anchor, positive, negative, semihard, loss with one entry per ordered positive
        pair, ordered by anchor then positive (Numba device arrays for GPU input on "cuda").
        The mean of `loss` is `triplet_semihard_loss`.
    """
    implementation, batch = resolve(
        labels, embeddings, margin, distance_metric, backend, check_finite
    )
    return implementation.mine(batch)

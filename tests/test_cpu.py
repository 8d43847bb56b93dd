"""Properties specific to the compiled "cpu" backend."""

import numba
import numpy as np
import pytest

import semihard_numba as sn


def clustered(B, per_class, D=16, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(B // per_class), per_class)
    x = rng.standard_normal((B // per_class, D))[labels] + 0.7 * rng.standard_normal((B, D))
    return labels, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("per_class", [4, 64])  # linear/sorted search, sparse/dense backward
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_bit_identical_whatever_the_thread_count(per_class, metric):
    labels, x = clustered(512, per_class)
    saved = numba.get_num_threads()
    try:
        numba.set_num_threads(1)
        one = sn.triplet_semihard_loss_and_grad(labels, x, 0.5, metric, backend="cpu")
        numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        many = sn.triplet_semihard_loss_and_grad(labels, x, 0.5, metric, backend="cpu")
    finally:
        numba.set_num_threads(saved)
    assert one[0] == many[0] and one[0] > 0
    np.testing.assert_array_equal(one[1], many[1])


@pytest.mark.parametrize("per_class", [2, 8, 256])
def test_large_batches_agree_with_the_vectorized_port(per_class):
    labels, x = clustered(256, per_class, seed=per_class)
    for metric in ("L2", "angular"):
        cpu = sn.triplet_semihard_loss(labels, x, 1.0, metric, backend="cpu")
        vectorized = sn.triplet_semihard_loss(labels, x, 1.0, metric, backend="numpy")
        assert cpu == pytest.approx(vectorized, rel=1e-6)


"""Properties specific to the compiled "cpu" backend."""

import os
import subprocess
import sys

import numba
import numpy as np
import pytest

import semihard_numba as sn
from semihard_numba import _cpu


def clustered(B, per_class, D=16, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(B // per_class), per_class)
    x = rng.standard_normal((B // per_class, D))[labels] + 0.7 * rng.standard_normal((B, D))
    return labels, (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(dtype)


@pytest.mark.parametrize("per_class", [4, 64])  # linear/sorted search, sparse/dense backward
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_bit_identical_whatever_the_thread_count(per_class, metric, monkeypatch):
    monkeypatch.setattr(_cpu, "SERIAL_MAX_BATCH", 0)  # small batches would run on one thread
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


CACHED_RUN = """
import numpy as np, semihard_numba as sn
labels = np.repeat(np.arange(16), 4)
x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
loss, grad = sn.triplet_semihard_loss_and_grad(labels, x)
print(repr(float(loss)), repr(float(np.abs(grad).sum())))
"""


def test_on_disk_cache_serves_processes_with_another_thread_count(tmp_path):
    """The parallel kernels are cached: compile with 2 threads, then load with 1 and with 2."""
    outputs = []
    for threads in ("2", "1", "2"):
        env = dict(
            os.environ,
            NUMBA_CACHE_DIR=str(tmp_path),
            NUMBA_NUM_THREADS=threads,
            SEMIHARD_NUMBA_CACHE="1",
        )
        run = subprocess.run(
            [sys.executable, "-c", CACHED_RUN], env=env, capture_output=True, text=True, check=True
        )
        outputs.append(run.stdout)
    assert outputs[0] == outputs[1] == outputs[2]
    assert list(tmp_path.rglob("*.nbi")), "nothing was cached"


@pytest.mark.parametrize("dtype, uint", [(np.float32, np.uint32), (np.float64, np.uint64)])
def test_radix_argsort_orders_floats_like_numpy(dtype, uint):
    from semihard_numba._radix_sort import radix_argsort

    rng = np.random.default_rng(3)
    values = np.concatenate(
        [
            rng.standard_normal(3000) * 10.0 ** rng.integers(-30, 30, 3000),
            [0.0, -0.0, np.inf, -np.inf, 1.0, 1.0, 1.0],
        ]
    ).astype(dtype)
    order = radix_argsort(values.view(uint), np.arange(len(values)))
    np.testing.assert_array_equal(values[order], np.sort(values))
    ones = np.flatnonzero(values == 1.0)
    assert (order[np.isin(order, ones)] == ones).all()  # stable: ties keep their index order


@pytest.mark.parametrize("negatives", ["spread", "clumped"])  # bucketed searches / radix fallback
def test_large_class_searches_match_the_linear_scan(negatives):
    from semihard_numba._inputs import host_batch

    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1], 60)
    x = rng.standard_normal((120, 6))
    if negatives == "clumped":  # class 1 on three points: buckets far fuller than BUCKET_MAX
        x[60:] = x[60:63][rng.integers(0, 3, 60)]
    batch = host_batch(labels, x.astype(np.float32), 0.5, "L2")
    linear, searched = 10**9, 16  # sort_min_positives
    assert _cpu.loss(batch, searched) == _cpu.loss(batch, linear) > 0
    loss_s, grad_s = _cpu.loss_and_grad(batch, searched)
    loss_l, grad_l = _cpu.loss_and_grad(batch, linear)
    assert loss_s == loss_l
    np.testing.assert_array_equal(grad_s, grad_l)
    for field in ("negative", "semihard", "loss"):
        np.testing.assert_array_equal(
            getattr(_cpu.mine(batch, searched), field), getattr(_cpu.mine(batch, linear), field)
        )


@pytest.mark.parametrize("scale", [1e-300, 1e-307, 1e-320])  # span * buckets overflows from ~1e-305
def test_large_class_search_with_tiny_distances(scale):
    from semihard_numba._distances import pairwise_distances
    from semihard_numba._inputs import host_batch

    labels = np.repeat([0, 1], 40)
    x = np.random.default_rng(0).standard_normal((80, 4))
    batch = host_batch(labels, x, 0.0, lambda y: pairwise_distances(y, "L2") * scale)
    linear, searched = 10**9, 16  # sort_min_positives
    assert _cpu.loss(batch, searched) == _cpu.loss(batch, linear) > 0
    np.testing.assert_array_equal(
        _cpu.mine(batch, searched).negative, _cpu.mine(batch, linear).negative
    )


@pytest.mark.parametrize("dtype, uint", [(np.float32, np.uint32), (np.float64, np.uint64)])
@pytest.mark.parametrize("distances", ["spread", "ties", "negative", "clumped", "all equal"])
def test_sorted_negatives_are_a_stable_sort_with_a_consistent_bucket_table(distances, dtype, uint):
    rng = np.random.default_rng(7)
    B = 400
    row = {
        "spread": lambda: rng.gamma(4.0, size=B),
        "ties": lambda: rng.integers(0, 150, B) / 7.0,  # a few per value: buckets still small
        "negative": lambda: rng.standard_normal(B) - 3,  # a callable metric may give these
        "clumped": lambda: rng.integers(0, 3, B) + 1e-3 * rng.random(B),  # radix fallback
        "all equal": lambda: np.full(B, 0.5),
    }[distances]().astype(dtype)
    codes = rng.integers(0, 3, B)
    a = 0
    negatives = np.flatnonzero(codes != codes[a])
    order, values, start, lo, scale = _cpu._sorted_negatives(
        row, row.view(uint), codes, a, len(negatives)
    )
    np.testing.assert_array_equal(order, negatives[np.argsort(row[negatives], kind="stable")])
    np.testing.assert_array_equal(values, row[order])
    assert (len(start) == 0) == (distances in ("clumped", "all equal"))
    if len(start):  # bucket b holds values[start[b]:start[b + 1]]: check every one
        for b in range(len(negatives)):
            assert all(
                _cpu._bucket(v, lo, scale, len(negatives)) == b
                for v in values[start[b] : start[b + 1]]
            )


@pytest.mark.parametrize("D", [3, 256, 257])  # plain product / NumPy's syrk
def test_gram_is_x_times_x_transposed(D):
    from semihard_numba._distances import gram

    x = np.random.default_rng(D).standard_normal((300, D)).astype(np.float32)
    exact = x.astype(np.float64) @ x.T.astype(np.float64)
    np.testing.assert_allclose(gram(x), exact, rtol=1e-5, atol=1e-6 * D)  # float32 rounding


@pytest.mark.parametrize("B", [1, 7, 8, 9, 100, 257])  # one tile, edge tiles, odd tile counts
def test_symmetrize_adds_the_transpose_in_place(B):
    W = np.random.default_rng(B).standard_normal((B, B)).astype(np.float32)
    expected = W + W.T
    _cpu._symmetrize(W)
    np.testing.assert_array_equal(W, expected)

"""Every backend agrees with the readable loop ("python") on random batches."""

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import semihard_numba as sn

import cpu_paths
from cpu_paths import LINEAR, SORTED
from semihard_numba import _cpu
from semihard_numba._rules import Rule
from semihard_numba._distances import pairwise_distances
from semihard_numba._inputs import host_batch

METRICS = ["L2", "squared-L2", "angular"]


@st.composite
def batches(draw, max_batch=20):
    B = draw(st.integers(1, max_batch))
    D = draw(st.integers(1, 5))
    n_classes = draw(st.integers(1, B))
    labels = draw(hnp.arrays(np.int64, B, elements=st.integers(0, n_classes - 1)))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    if draw(st.booleans()):  # small integer grids: exact ties and duplicate points
        x = draw(hnp.arrays(dtype, (B, D), elements=st.integers(-3, 3).map(float)))
    else:
        x = draw(hnp.arrays(dtype, (B, D), elements=st.floats(-10, 10, width=32)))
    metric = draw(st.sampled_from(METRICS))
    if metric == "angular":
        # A zero row is normalised with TFA's epsilon (rsqrt(1e-12) = 1e6): its gradient is rounding
        # noise times 1e6 on every backend, TF's included, so it cannot be compared.
        x[~x.any(axis=1)] = 1
    margin = draw(st.sampled_from([0.0, 0.2, 1.0, 2.5]))
    return labels, x, metric, margin


def gradient_atol(x, metric):
    """Rounding bound for gradients summed from terms w_ij (x_i - x_j): with near-duplicate points
    a rounded-up distance d leaves terms of size |x| / d that cancel only to rounding."""
    D = pairwise_distances(x, metric)
    smallest = D[D > 0].min() if (D > 0).any() else 1.0
    size = np.abs(x).max() + 1
    term = size / smallest if metric == "L2" else size * (size if metric == "squared-L2" else 1)
    return 20 * np.finfo(x.dtype).eps * len(x) * max(term, 1.0)


def assert_gradients_close(actual, expected, x, metric, rtol, err_msg=""):
    """assert_allclose with `gradient_atol`. For "angular", row i's gradient is dL/dn_i times
    1 / max(|x_i|, 1e-6), which magnifies the rounding of a short row (x_i = 1e-12: a million
    times): each row is compared after dividing by that factor."""
    magnification = 1.0
    if metric == "angular":
        norms = np.sqrt((x.astype(np.float64) ** 2).sum(axis=1, keepdims=True))
        magnification = np.maximum(1 / np.maximum(norms, 1e-6), 1.0)
    np.testing.assert_allclose(
        actual / magnification,
        expected / magnification,
        rtol=rtol,
        atol=gradient_atol(x, metric),
        err_msg=err_msg,
    )


def assert_same_mining(mined, expected):
    for field in ("anchor", "positive", "negative", "semihard", "loss"):
        np.testing.assert_array_equal(
            getattr(mined, field), getattr(expected, field), err_msg=field
        )


@given(batches())
def test_backends_agree_with_the_readable_loop(batch):
    labels, x, metric, margin = batch
    rtol = 1e-6 if x.dtype == np.float32 else 1e-12
    expected = sn.triplet_semihard_loss(labels, x, margin, metric, backend="python")
    expected_mined = sn.mine_semihard(labels, x, margin, metric, backend="python")
    expected_grad = sn.triplet_semihard_loss_and_grad(labels, x, margin, metric, backend="python")[
        1
    ]
    for backend in ("numpy", "cpu"):
        loss = sn.triplet_semihard_loss(labels, x, margin, metric, backend=backend)
        assert loss.dtype == x.dtype
        np.testing.assert_allclose(loss, expected, rtol=rtol, atol=1e-7, err_msg=backend)
        assert_same_mining(
            sn.mine_semihard(labels, x, margin, metric, backend=backend), expected_mined
        )
        _, grad = sn.triplet_semihard_loss_and_grad(labels, x, margin, metric, backend=backend)
        assert_gradients_close(grad, expected_grad, x, metric, rtol=1e-4, err_msg=backend)


# the other rules: (loss, loss_and_grad) with the keyword arguments after the metric
OTHER_RULES = {
    "hard": (sn.triplet_hard_loss, sn.triplet_hard_loss_and_grad, {}),
    "hard, soft": (sn.triplet_hard_loss, sn.triplet_hard_loss_and_grad, {"soft": True}),
    "batch-all": (sn.triplet_batch_all_loss, sn.triplet_batch_all_loss_and_grad, {}),
    "all-semihard": (sn.triplet_all_semihard_loss, sn.triplet_all_semihard_loss_and_grad, {}),
}


def call(function, labels, x, margin, metric, options, backend):
    return function(
        labels,
        x,
        margin=margin,
        distance_metric=metric,
        backend=backend,
        return_stats=True,
        **options,
    )


@given(batches(), st.sampled_from(sorted(OTHER_RULES)))
def test_the_other_rules_agree_with_the_readable_loops(batch, rule):
    labels, x, metric, margin = batch
    loss_fn, grad_fn, options = OTHER_RULES[rule]
    # the sorted search sums in float64 what the loops sum term by term: a few roundings apart
    rtol = 1e-5 if x.dtype == np.float32 else 1e-12
    expected, expected_stats = call(loss_fn, labels, x, margin, metric, options, "python")
    _, expected_grad, _ = call(grad_fn, labels, x, margin, metric, options, "python")
    for backend in ("numpy", "cpu"):
        loss, stats = call(loss_fn, labels, x, margin, metric, options, backend)
        assert loss.dtype == x.dtype and stats == expected_stats, backend
        np.testing.assert_allclose(loss, expected, rtol=rtol, atol=1e-6, err_msg=backend)
        grad_loss, grad, grad_stats = call(grad_fn, labels, x, margin, metric, options, backend)
        assert grad_loss == loss and grad_stats == stats
        assert_gradients_close(grad, expected_grad, x, metric, rtol=1e-4, err_msg=backend)


@given(batches(max_batch=40), st.sampled_from(["batch-all", "all-semihard"]))
def test_sorted_and_post_loop_paths_agree_for_every_triplet(batch, rule):
    labels, x, metric, margin = batch
    b = host_batch(labels, x, margin, metric)
    (loss_l, stats_l, grad_l), (loss_s, stats_s, grad_s) = (
        _cpu.evaluate(b, Rule(rule), True, sorted_search_min_positives=search)
        for search in (LINEAR, SORTED)
    )
    assert stats_l == stats_s
    np.testing.assert_allclose(loss_s, loss_l, rtol=1e-6 if x.dtype == np.float32 else 1e-13)
    np.testing.assert_array_equal(grad_l, grad_s)  # integer counts either way


@given(batches(max_batch=40))
def test_sorted_and_linear_negative_search_are_identical(batch):
    labels, x, metric, margin = batch
    b = host_batch(labels, x, margin, metric)
    linear, sorted_ = 10**9, 0  # sort_min_positives: never / always sort
    assert cpu_paths.loss(b, sorted_search_min_positives=linear) == cpu_paths.loss(
        b, sorted_search_min_positives=sorted_
    )
    assert_same_mining(
        cpu_paths.mine(b, sorted_search_min_positives=linear),
        cpu_paths.mine(b, sorted_search_min_positives=sorted_),
    )
    loss_l, grad_l = cpu_paths.loss_and_grad(b, sorted_search_min_positives=linear)
    loss_s, grad_s = cpu_paths.loss_and_grad(b, sorted_search_min_positives=sorted_)
    assert loss_l == loss_s
    np.testing.assert_array_equal(grad_l, grad_s)


SHORT_ROW = (  # "angular": the row at 1e-12 is below the normalisation's epsilon (found by CI)
    np.array([0, 2, 1, 2, 2, 2]),
    np.array([[1.0], [1e-12], [-1.0], [-1.0], [-1.0], [-1.0]], dtype=np.float32),
    "angular",
    0.0,
)


@given(batches(max_batch=40))
@example(SHORT_ROW)
def test_sparse_and_dense_backward_agree(batch):
    labels, x, metric, margin = batch
    b = host_batch(labels, x, margin, metric)
    sparse, dense = 0, 10**9  # sparse_backward_max_density: always / never walk the nonzeros
    loss_s, grad_s = cpu_paths.loss_and_grad(b, sparse_backward_max_density=sparse)
    loss_d, grad_d = cpu_paths.loss_and_grad(b, sparse_backward_max_density=dense)
    assert loss_s == loss_d
    rtol = 1e-5 if x.dtype == np.float32 else 1e-12
    assert_gradients_close(grad_s, grad_d, x, metric, rtol=rtol)


@pytest.mark.parametrize("backend", ["python", "numpy", "cpu"])
@pytest.mark.parametrize("metric", METRICS)
class TestEdgeCases:
    def test_one_class(self, backend, metric):
        rng = np.random.default_rng(1)
        x = rng.standard_normal((6, 3)).astype(np.float32)
        loss = sn.triplet_semihard_loss(np.zeros(6, int), x, 1.0, metric, backend=backend)
        # no negative: TFA pairs every positive with the smallest entry of the anchor's row
        expected = sn.triplet_semihard_loss(np.zeros(6, int), x, 1.0, metric, backend="python")
        assert np.isfinite(loss) and loss == pytest.approx(expected, rel=1e-6)
        mined = sn.mine_semihard(np.zeros(6, int), x, 1.0, metric, backend=backend)
        assert len(mined) == 30 and (mined.negative == -1).all() and not mined.semihard.any()

    def test_all_classes_distinct_gives_zero(self, backend, metric):
        x = np.arange(12, dtype=np.float32).reshape(4, 3)
        assert sn.triplet_semihard_loss(np.arange(4), x, 1.0, metric, backend=backend) == 0.0
        assert len(sn.mine_semihard(np.arange(4), x, 1.0, metric, backend=backend)) == 0

    def test_single_point(self, backend, metric):
        assert sn.triplet_semihard_loss([3], [[1.0, 2.0]], 1.0, metric, backend=backend) == 0.0

    def test_two_points(self, backend, metric):
        x = np.array([[0.0, 1.0], [1.0, 0.0]])
        same = sn.triplet_semihard_loss([0, 0], x, 1.0, metric, backend=backend)
        expected = sn.triplet_semihard_loss([0, 0], x, 1.0, metric, backend="python")
        assert same == pytest.approx(expected) and same > 0
        assert sn.triplet_semihard_loss([0, 1], x, 1.0, metric, backend=backend) == 0.0

    def test_duplicate_points(self, backend, metric):
        x = np.array([[1.0, 1.0]] * 3 + [[2.0, 0.5]] * 3)
        labels = [0, 1, 0, 1, 0, 1]
        loss = sn.triplet_semihard_loss(labels, x, 0.5, metric, backend=backend)
        assert loss == pytest.approx(
            sn.triplet_semihard_loss(labels, x, 0.5, metric, backend="python"), rel=1e-12
        )

    def test_one_dimension(self, backend, metric):
        x = np.array([[0.0], [1.0], [3.0], [4.0], [-2.0]])
        labels = [0, 0, 1, 1, 0]
        assert sn.triplet_semihard_loss(labels, x, 1.0, metric, backend=backend) == pytest.approx(
            sn.triplet_semihard_loss(labels, x, 1.0, metric, backend="python"), rel=1e-12
        )


@given(batches())
def test_a_callable_metric_with_negative_values_agrees_too(batch):
    labels, x, _, margin = batch

    def negative_dot(y):  # any finite matrix is accepted, negative entries and ties included
        return -(y @ y.T)

    expected = sn.mine_semihard(labels, x, margin, negative_dot, backend="python")
    for backend in ("numpy", "cpu"):
        assert_same_mining(
            sn.mine_semihard(labels, x, margin, negative_dot, backend=backend), expected
        )
    b = host_batch(labels, x, margin, negative_dot)
    assert cpu_paths.loss(b, sorted_search_min_positives=10**9) == cpu_paths.loss(
        b, sorted_search_min_positives=0
    )  # linear and sorted search

"""Input handling: dtypes, layouts, and clear errors for bad input."""

import numpy as np
import pytest

import semihard_numba as sn

LABELS = np.array([0, 0, 1, 1, 2, 2])
X = np.random.default_rng(0).standard_normal((6, 3))
BACKENDS = ["python", "numpy", "cpu"]
LOSSES = [
    sn.triplet_semihard_loss,
    sn.triplet_semihard_loss_and_grad,
    sn.triplet_hard_loss,
    sn.triplet_hard_loss_and_grad,
    sn.triplet_batch_all_loss,
    sn.triplet_batch_all_loss_and_grad,
    sn.triplet_all_semihard_loss,
    sn.triplet_all_semihard_loss_and_grad,
]
FUNCTIONS = [*LOSSES, sn.mine_semihard]


def loss(labels=LABELS, x=X, **kwargs):
    return sn.triplet_semihard_loss(labels, x, **kwargs)


@pytest.mark.parametrize("backend", BACKENDS)
class TestDtypes:
    def test_float32_and_float64_keep_their_precision(self, backend):
        for dtype in (np.float32, np.float64):
            assert loss(x=X.astype(dtype), backend=backend).dtype == dtype
            _, grad = sn.triplet_semihard_loss_and_grad(LABELS, X.astype(dtype), backend=backend)
            assert grad.dtype == dtype

    def test_float16_is_computed_in_float32_and_returned_as_float16(self, backend):
        half = X.astype(np.float16)
        result = loss(x=half, backend=backend)
        assert result.dtype == np.float16
        assert result == np.float16(loss(x=half.astype(np.float32), backend=backend))
        _, grad = sn.triplet_semihard_loss_and_grad(LABELS, half, backend=backend)
        assert grad.dtype == np.float16

    def test_integers_are_promoted_to_float64(self, backend):
        ints = np.array([[0, 1], [1, 1], [5, 0], [4, 1], [9, 9], [8, 9]], dtype=np.int32)
        result = loss(x=ints, backend=backend)
        assert result.dtype == np.float64
        assert result == loss(x=ints.astype(np.float64), backend=backend)

    @pytest.mark.parametrize("bad", [X > 0, X + 1j, X.astype(object), X.astype(str)])
    def test_other_dtypes_are_a_type_error_saying_what_to_pass(self, backend, bad):
        with pytest.raises(TypeError, match="float32"):
            loss(x=bad, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
class TestLayouts:
    def test_read_only_non_contiguous_fortran_and_lists(self, backend):
        expected = loss(backend=backend)
        read_only = X.copy()
        read_only.flags.writeable = False
        assert loss(x=read_only, backend=backend) == expected
        assert loss(x=np.asfortranarray(X), backend=backend) == expected
        wide = np.zeros((6, 6))
        wide[:, ::2] = X
        assert loss(x=wide[:, ::2], backend=backend) == expected
        assert loss(labels=LABELS.tolist(), x=X.tolist(), backend=backend) == expected

    def test_float_labels_and_column_labels(self, backend):
        expected = loss(backend=backend)
        assert loss(labels=LABELS * 1.5 - 7, backend=backend) == expected
        assert loss(labels=LABELS[:, None], backend=backend) == expected
        assert loss(labels=LABELS.astype(np.uint8) + 200, backend=backend) == expected

    @pytest.mark.parametrize("function", FUNCTIONS)
    def test_inputs_are_never_modified(self, backend, function):
        labels, x = LABELS.copy(), X.copy()
        for metric in ("L2", "squared-L2", "angular"):
            function(labels, x, 1.0, distance_metric=metric, backend=backend)
        np.testing.assert_array_equal(labels, LABELS)
        np.testing.assert_array_equal(x, X)


@pytest.mark.parametrize("function", FUNCTIONS)
class TestErrors:
    def test_empty_batch(self, function):
        with pytest.raises(ValueError, match="B = 0"):
            function([], np.zeros((0, 3)))

    def test_batch_sizes_disagree(self, function):
        with pytest.raises(ValueError, match=r"5 labels .* shape \(6, 3\)"):
            function(LABELS[:5], X)

    @pytest.mark.parametrize("shape", [(6,), (6, 3, 1)])
    def test_embeddings_of_wrong_ndim(self, function, shape):
        with pytest.raises(ValueError, match=r"2-D .* got shape"):
            function(LABELS, np.zeros(shape))

    def test_labels_of_wrong_shape(self, function):
        with pytest.raises(ValueError, match=r"labels must have shape .* \(6, 2\)"):
            function(np.zeros((6, 2)), X)

    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
    def test_non_finite_embeddings(self, function, value):
        bad = X.copy()
        bad[4, 1] = value
        with pytest.raises(ValueError, match=r"NaN or infinite values in rows \[4\]"):
            function(LABELS, bad)

    def test_nan_labels(self, function):
        with pytest.raises(ValueError, match=r"labels contain NaN at positions \[2\]"):
            function([0.0, 0.0, np.nan, 1.0, 2.0, 2.0], X)

    def test_string_labels(self, function):
        with pytest.raises(TypeError, match="integer or float class ids"):
            function(list("aabbcc"), X)

    @pytest.mark.parametrize("margin", [np.nan, np.inf])
    def test_non_finite_margin(self, function, margin):
        with pytest.raises(ValueError, match="margin must be finite"):
            function(LABELS, X, margin)

    def test_unknown_metric(self, function):
        with pytest.raises(ValueError, match="unknown distance_metric 'cosine'"):
            function(LABELS, X, distance_metric="cosine")

    def test_unknown_backend(self, function):
        with pytest.raises(ValueError, match="unknown backend 'gpu'"):
            function(LABELS, X, backend="gpu")


def test_check_finite_false_skips_the_check():
    bad = X.copy()
    bad[0, 0] = np.nan
    loss(x=bad, check_finite=False)  # no error; the result is unspecified


@pytest.mark.parametrize("backend", BACKENDS)
class TestCallableMetric:
    def test_a_callable_metric_is_used(self, backend):
        def manhattan(x):
            return np.abs(x[:, None, :] - x[None, :, :]).sum(-1)

        from semihard_numba._python import _triplets

        D = manhattan(X)
        expected = np.mean([t[4] for t in _triplets(LABELS, D, 1.0, range(len(LABELS)))])
        assert loss(distance_metric=manhattan, backend=backend) == pytest.approx(expected)

    def test_wrong_shape(self, backend):
        with pytest.raises(ValueError, match=r"must return a \(6, 6\) matrix, got shape \(6, 5\)"):
            loss(distance_metric=lambda x: np.zeros((6, 5)), backend=backend)

    def test_non_finite_values(self, backend):
        with pytest.raises(ValueError, match="NaN or infinite distances"):
            loss(distance_metric=lambda x: np.full((6, 6), np.nan), backend=backend)


def test_numpy_backend_refuses_batches_beyond_its_memory_limit(monkeypatch):
    monkeypatch.setenv("SEMIHARD_NUMBA_NUMPY_MAX_BYTES", str(10**6))
    with pytest.raises(MemoryError, match=r"B = 100 .* backend=\"cpu\""):
        loss(labels=np.arange(100) % 7, x=np.zeros((100, 2)), backend="numpy")
    loss(backend="numpy")  # B = 6 is far below the limit
    monkeypatch.setenv("SEMIHARD_NUMBA_NUMPY_MAX_BYTES", "2GiB")
    with pytest.raises(ValueError, match="SEMIHARD_NUMBA_NUMPY_MAX_BYTES must be a number"):
        loss(backend="numpy")


@pytest.mark.parametrize("function", FUNCTIONS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("metric", ["L2", "squared-L2"])
@pytest.mark.parametrize("scale", [1e20, 1.5e19])  # |x|^2 overflows / only |x|^2 + |y|^2 does
def test_overflowing_squared_norms_raise(function, backend, metric, scale):
    big = (X * scale).astype(np.float32)
    for check_finite in (True, False):  # the squared norms are computed anyway: always checked
        with pytest.raises(
            ValueError, match=r"squared norms of embedding rows \[.*\] overflow float32"
        ):
            function(
                LABELS, big, 1.0, distance_metric=metric, backend=backend, check_finite=check_finite
            )
    # float64 holds them
    result = function(LABELS, big.astype(np.float64), 1.0, distance_metric=metric, backend=backend)
    values = result.loss if function is sn.mine_semihard else result
    assert all(np.isfinite(v).all() for v in (values if isinstance(values, tuple) else [values]))


@pytest.mark.parametrize("backend", BACKENDS)
def test_angular_normalises_huge_rows_without_overflow(backend):
    """Scaling embeddings does not change angular distances: float32 rows at 1e20 (whose
    squared norms overflow) give the loss and mining of the rows at scale 1."""
    x = X.astype(np.float32)
    big = x * np.float32(1e20)
    with np.errstate(over="ignore"):
        assert np.isinf((big**2).sum(axis=1)).all()
    expected = sn.triplet_semihard_loss(LABELS, x, 0.5, "angular", backend=backend)
    got = sn.triplet_semihard_loss(LABELS, big, 0.5, "angular", backend=backend)
    assert got == pytest.approx(expected, rel=1e-5)
    np.testing.assert_array_equal(
        sn.mine_semihard(LABELS, big, 0.5, "angular", backend=backend).negative,
        sn.mine_semihard(LABELS, x, 0.5, "angular", backend=backend).negative,
    )
    _, grad = sn.triplet_semihard_loss_and_grad(LABELS, big, 0.5, "angular", backend=backend)
    _, grad_1 = sn.triplet_semihard_loss_and_grad(LABELS, x, 0.5, "angular", backend=backend)
    np.testing.assert_allclose(grad * np.float32(1e20), grad_1, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("margin", [np.array(1.0), np.array(1), np.array(0.5, dtype=np.float32)])
def test_margin_as_a_zero_dimensional_array(margin):
    assert loss(margin=margin) == loss(margin=float(margin))


@pytest.mark.parametrize("margin", [np.array([1.0]), np.array(True), True, "1.0", None])
def test_margin_of_another_kind_is_a_type_error(margin):
    with pytest.raises(TypeError, match="margin must be a real number"):
        loss(margin=margin)


@pytest.mark.parametrize("soft", [1, 0, "yes", None, np.array(True)])
def test_soft_must_be_a_bool(soft):
    for function in (sn.triplet_hard_loss, sn.triplet_hard_loss_and_grad):
        with pytest.raises(TypeError, match="soft must be a bool"):
            function(LABELS, X, soft=soft)
    assert sn.triplet_hard_loss(LABELS, X, soft=np.bool_(True)) == sn.triplet_hard_loss(
        LABELS, X, soft=True
    )


@pytest.mark.parametrize("function", LOSSES)
def test_return_stats_must_be_a_bool(function):
    with pytest.raises(TypeError, match="return_stats must be a bool"):
        function(LABELS, X, return_stats=1)


@pytest.mark.parametrize("function", LOSSES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_every_loss_keeps_the_input_precision(function, backend):
    for dtype in (np.float16, np.float32, np.float64, np.int32):
        result = function(LABELS, (X * 4).astype(dtype), backend=backend)
        values = result if isinstance(result, tuple) else (result,)
        expected = np.float64 if dtype == np.int32 else dtype
        assert all(v.dtype == expected for v in values), (dtype, [v.dtype for v in values])


@pytest.mark.parametrize("function", [f for f in LOSSES if f.__name__.endswith("_and_grad")])
def test_a_callable_metric_has_no_gradient(function):
    with pytest.raises(TypeError, match="callable metric has no gradient"):
        function(LABELS, X, distance_metric=lambda x: x @ x.T)

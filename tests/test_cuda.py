"""The "cuda" backend against the golden TFA data and the "python" reference.

CI has no GPU: run this file in its own process under Numba's CUDA simulator, which must be enabled
before numba is imported:

    NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/test_cuda.py

Without the simulator and without a usable GPU every test here is skipped. The simulator runs each
GPU thread as a Python thread, so batches stay small (B <= 64). It does no type inference either:
bench/gpu_check.py runs the same golden cases on a real GPU.
"""

import os
import sys
import warnings

import numpy as np
import pytest

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")

if not SIMULATOR:
    from semihard_numba import _dispatch

    if not _dispatch.cuda_status()[0]:
        pytest.skip(
            "needs a CUDA GPU or the CUDA simulator: run NUMBA_ENABLE_CUDASIM=1 python -m pytest "
            "tests/test_cuda.py in a separate process",
            allow_module_level=True,
        )

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numba import cuda

import semihard_numba as sn
import golden
from semihard_numba import _cuda
from tiers import golden_sample
from semihard_numba import _cuda_kernels as kernels

if SIMULATOR:
    import threading

    from numba.cuda.simulator import kernelapi

    _shared_lock = threading.Lock()

    def _locked_shared_array(self, shape, dtype):
        """FakeCUDAShared.array with a lock. The simulator finds a block's shared array by the
        calling line in a dict without a lock, so two threads of a block can each create their own
        copy (numba 0.68, numba-cuda 0.30) and a reduction then misses values."""
        if not isinstance(dtype, np.dtype):
            dtype = np.dtype(kernelapi.numpy_support.as_dtype(dtype))
        if shape == 0:  # dynamic shared memory: not used by semihard_numba
            raise NotImplementedError
        frame = sys._getframe(1)
        caller = (frame.f_code.co_filename, frame.f_lineno)
        with _shared_lock:
            res = self._allocations.get(caller)
            if res is None:
                res = self._allocations[caller] = np.empty(shape, dtype)
        return res

    kernelapi.FakeCUDAShared.array = _locked_shared_array

# Golden cases up to this batch size run under the simulator; the quick tier's sample leaves out
# the largest, whose B = 64 takes the simulator up to 12 s a case (tiers.py).
SMALL = 64
SEMIHARD_CASES, HARD_CASES, VARIANT_CASES = (
    golden_sample([c for c in cases if len(c.labels) <= SMALL], largest=False)
    for cases in (
        golden.semihard_cases(),
        golden.hard_cases(),
        golden.batch_all_cases() + golden.all_semihard_cases(),
    )
)
METRICS = ("L2", "squared-L2", "angular")


def loss_tolerance(case):
    """The golden files' tolerances; but the simulator computes the Gram matrix without fused
    multiply-adds, where BLAS (and a GPU) use them, so at large coordinates each distance rounds
    differently by up to a few ulps of the largest distance, and a loss made of differences of
    distances keeps that (golden case 119: 1e-3 on squared distances of 5e4)."""
    if SIMULATOR and case.kind == "large_scale":
        D = sn._distances.pairwise_distances(case.embeddings, case.metric)
        return dict(rtol=1e-5, atol=4 * np.finfo(np.float32).eps * float(D.max()))
    return dict(rtol=1e-5, atol=1e-6)


@pytest.fixture(autouse=True)
def small_launches(monkeypatch):
    """Small blocks so that a B <= 64 batch spans several blocks, blocks smaller than the batch and
    grid-stride loops (MAX_BLOCKS below the number of anchors)."""
    monkeypatch.setattr(_cuda, "TILE", 4)
    monkeypatch.setattr(_cuda, "REG", 2)
    monkeypatch.setattr(_cuda, "THREADS", 8)
    monkeypatch.setattr(_cuda, "MAX_BLOCKS", 16)


@pytest.fixture(autouse=True, scope="module")
def fast_thread_switching():
    """The simulator's block manager polls its threads; switching the GIL more often saves time."""
    before = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(before)


def test_the_kernels_run_the_functions_of_the_cpu_backend():
    """The post's loop and the distance formulas are shared, not copied: the kernels call the very
    Numba functions "cpu" runs (their Python source under the simulator)."""
    from semihard_numba import _loop, _metrics

    shared = {
        "_choose_negative": _loop.choose_negative,
        "_count_negatives_at": _loop.count_negatives_at,
        "_smallest_entry": _loop.smallest_entry,
        "_hardest_pair": _loop.hardest_pair,
        "_hard_candidate": _loop.hard_candidate,
        "_pair_triplets": _loop.pair_triplets,
        "_passing_positives": _loop.passing_positives,
        "_distance": _metrics.distance,
        "_pre_distance_gradient": _metrics.pre_distance_gradient,
    }
    for name, function in shared.items():
        assert getattr(kernels, name) is (function.py_func if SIMULATOR else function), name


@pytest.mark.parametrize("case", SEMIHARD_CASES, ids=repr)
def test_golden_semihard(case):
    kwargs = dict(margin=case.margin, distance_metric=case.metric, backend="cuda")
    loss, grad = sn.triplet_semihard_loss_and_grad(case.labels, case.embeddings, **kwargs)
    if np.isnan(case.loss):  # no positive pair: TFA's 0 / 0; we give 0.0 and a zero gradient
        assert loss == 0.0 and not grad.any()
        return
    assert loss.dtype == np.float32 and grad.dtype == np.float32 and isinstance(grad, np.ndarray)
    np.testing.assert_allclose(loss, case.loss, rtol=1e-5, atol=1e-6)
    expected_grad = case.grad
    if case.case == golden.TF_TIE_LEAK_CASE:  # TF's tie handling: compare with "python" instead
        expected_grad = sn.triplet_semihard_loss_and_grad(
            case.labels, case.embeddings, **{**kwargs, "backend": "python"}
        )[1]
    np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
    assert sn.triplet_semihard_loss(case.labels, case.embeddings, **kwargs) == loss


@pytest.mark.parametrize("case", HARD_CASES, ids=repr)
def test_golden_hard(case):
    loss, grad, stats = sn.triplet_hard_loss_and_grad(
        case.labels,
        case.embeddings,
        case.margin,
        case.soft,
        case.metric,
        backend="cuda",
        return_stats=True,
    )
    assert stats.denominator == len(case.labels)
    if case.case in golden.TF_SOFTPLUS_OVERFLOW_CASES:  # TF's float32 softplus overflows there
        expected = sn.triplet_hard_loss_and_grad(
            case.labels,
            case.embeddings.astype(np.float64),
            case.margin,
            True,
            case.metric,
            backend="python",
        )
        np.testing.assert_allclose(loss, expected[0], rtol=1e-5)
        np.testing.assert_allclose(
            grad, expected[1], rtol=1e-3, atol=1e-4 * np.abs(expected[1]).max()
        )
        return
    np.testing.assert_allclose(loss, case.loss, **loss_tolerance(case))
    np.testing.assert_allclose(grad, case.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("case", VARIANT_CASES, ids=lambda c: f"{c.function}-{c!r}")
def test_golden_batch_all_and_all_semihard(case):
    function = {
        "st_batch_all": sn.triplet_batch_all_loss_and_grad,
        "pml_semihard": sn.triplet_all_semihard_loss_and_grad,
    }[case.function]
    loss, grad, stats = function(
        case.labels, case.embeddings, case.margin, case.metric, backend="cuda", return_stats=True
    )
    assert stats.denominator == case.count
    np.testing.assert_allclose(loss, case.loss, **loss_tolerance(case))
    scale = max(np.abs(case.grad).max(), np.finfo(np.float32).tiny)
    np.testing.assert_allclose(grad / scale, case.grad / scale, rtol=1e-4, atol=1e-6)


# Small integer multiples of 1/2: every product and sum below is exact in float32, so the GPU's
# summation order cannot move a near-tie and the "python" backend must agree exactly.
exact_batches = st.integers(2, 12).flatmap(
    lambda B: st.tuples(
        st.lists(st.integers(0, 3), min_size=B, max_size=B),
        st.lists(st.lists(st.integers(-4, 4), min_size=3, max_size=3), min_size=B, max_size=B),
    )
)


def compare_with_python(labels, x, metric, margin):
    kwargs = dict(margin=margin, distance_metric=metric)
    got = sn.mine_semihard(labels, x, backend="cuda", **kwargs)
    want = sn.mine_semihard(labels, x, backend="python", **kwargs)
    for field in ("anchor", "positive", "negative", "semihard"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-6, atol=1e-6)
    loss, grad = sn.triplet_semihard_loss_and_grad(labels, x, backend="cuda", **kwargs)
    want_loss, want_grad = sn.triplet_semihard_loss_and_grad(labels, x, backend="python", **kwargs)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(exact_batches, st.sampled_from(["L2", "squared-L2"]), st.sampled_from([0.0, 0.5, 1.0]))
def test_matches_python_exact_inputs(batch, metric, margin):
    labels, values = batch
    compare_with_python(np.array(labels), np.array(values, dtype=np.float32) / 2, metric, margin)


OTHER_RULES = {
    "hard": (sn.triplet_hard_loss_and_grad, {}),
    "hard, soft": (sn.triplet_hard_loss_and_grad, {"soft": True}),
    "batch-all": (sn.triplet_batch_all_loss_and_grad, {}),
    "all-semihard": (sn.triplet_all_semihard_loss_and_grad, {}),
}


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    exact_batches,
    st.sampled_from(["L2", "squared-L2"]),
    st.sampled_from([0.0, 0.5, 1.0]),
    st.sampled_from(sorted(OTHER_RULES)),
)
def test_other_rules_match_python_exact_inputs(batch, metric, margin, rule):
    labels, values = np.array(batch[0]), np.array(batch[1], dtype=np.float32) / 2
    function, options = OTHER_RULES[rule]
    kwargs = dict(margin=margin, distance_metric=metric, return_stats=True, **options)
    loss, grad, stats = function(labels, values, backend="cuda", **kwargs)
    want_loss, want_grad, want_stats = function(labels, values, backend="python", **kwargs)
    assert stats == want_stats
    np.testing.assert_allclose(loss, want_loss, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-5, atol=1e-6)


@settings(max_examples=6, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.integers(0, 2**32 - 1), st.integers(2, 16), st.integers(1, 4))
def test_angular_mining_matches_python_on_the_same_distances(seed, B, n_classes):
    """Cosine sums depend on the summation order: compare the distances with a tolerance, then the
    mining exactly, with the "python" backend given the GPU's own distance matrix."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, n_classes, B)
    x = rng.normal(size=(B, 4)).astype(np.float32)
    batch = sn._inputs.host_batch(labels, x, 1.0, "angular")
    all_rows = cuda.to_device(np.arange(B, dtype=np.int64))
    D = _cuda._Embeddings(batch, cuda.to_device(x)).rows(all_rows).copy_to_host()
    np.testing.assert_allclose(D, sn._distances.pairwise_distances(x, "angular"), atol=2e-6)
    got = sn.mine_semihard(labels, x, distance_metric="angular", backend="cuda")
    want = sn.mine_semihard(labels, x, distance_metric=lambda _: D, backend="python")
    for field in ("anchor", "positive", "negative", "semihard"):
        np.testing.assert_array_equal(getattr(got, field), getattr(want, field), err_msg=field)
    np.testing.assert_allclose(got.loss, want.loss, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "threads,tile,reg,max_blocks", [(1, 1, 1, 1), (3, 2, 3, 2), (32, 8, 4, 65535)]
)
def test_launch_configurations(monkeypatch, threads, tile, reg, max_blocks):
    """Block sizes below, around and above the batch give the same answer."""
    monkeypatch.setattr(_cuda, "THREADS", threads)
    monkeypatch.setattr(_cuda, "TILE", tile)
    monkeypatch.setattr(_cuda, "REG", reg)
    monkeypatch.setattr(_cuda, "MAX_BLOCKS", max_blocks)
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 3, 13)
    x = (rng.integers(-4, 5, size=(13, 5)) / 2).astype(np.float32)
    for metric in METRICS:
        got = sn.triplet_semihard_loss_and_grad(labels, x, distance_metric=metric, backend="cuda")
        want = sn.triplet_semihard_loss_and_grad(
            labels, x, distance_metric=metric, backend="python"
        )
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)


def random_batch(B=24, D=6, classes=4, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, B), rng.normal(size=(B, D)).astype(dtype)


def test_device_input_stays_on_the_device():
    labels, x = random_batch()
    x_dev = cuda.to_device(x)
    loss = sn.triplet_semihard_loss(labels, x_dev, backend="cuda")
    assert isinstance(loss, np.float32)
    assert loss == sn.triplet_semihard_loss(labels, x, backend="cuda")
    np.testing.assert_allclose(
        loss, sn.triplet_semihard_loss(labels, x, backend="python"), rtol=1e-6
    )

    mined = sn.mine_semihard(labels, x_dev, backend="cuda")
    assert all(
        _cuda.is_device_array(getattr(mined, f))
        for f in ("anchor", "positive", "negative", "semihard", "loss")
    )
    host = sn.mine_semihard(labels, x, backend="python")
    for field in ("anchor", "positive", "negative", "semihard"):
        np.testing.assert_array_equal(getattr(mined, field).copy_to_host(), getattr(host, field))

    loss_g, grad = sn.triplet_semihard_loss_and_grad(labels, x_dev, backend="cuda")
    assert _cuda.is_device_array(grad) and grad.dtype == np.float32 and grad.shape == x.shape
    want = sn.triplet_semihard_loss_and_grad(labels, x, backend="python")[1]
    np.testing.assert_allclose(grad.copy_to_host(), want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(x_dev.copy_to_host(), x)  # the input is not written to


def test_auto_sends_device_input_to_cuda(monkeypatch):
    labels, x = random_batch(B=10)
    mined = sn.mine_semihard(labels, cuda.to_device(x))  # backend="auto"
    assert _cuda.is_device_array(mined.anchor)


def test_auto_sends_large_host_batches_to_cuda(monkeypatch):
    labels, x = random_batch(B=10)
    monkeypatch.setenv("SEMIHARD_NUMBA_CUDA_MIN_BATCH", "10")
    calls = []
    stats = sn.TripletStats(0, 0, 0, 0)
    monkeypatch.setattr(
        _cuda, "evaluate", lambda batch, *_: calls.append(batch) or (0.5, stats, None)
    )
    assert sn.triplet_semihard_loss(labels, x) == np.float32(0.5)
    assert len(calls) == 1
    monkeypatch.setenv("SEMIHARD_NUMBA_CUDA_MIN_BATCH", "11")
    sn.triplet_semihard_loss(labels, x)
    assert len(calls) == 1  # below the crossover: "cpu"


def test_mixed_host_and_device_labels():
    labels, x = random_batch(B=16)
    want = sn.triplet_semihard_loss(labels, x, backend="python")
    for lab in (labels, cuda.to_device(labels), cuda.to_device(labels.reshape(-1, 1))):
        for emb in (x, cuda.to_device(x)):
            np.testing.assert_allclose(
                sn.triplet_semihard_loss(lab, emb, backend="cuda"), want, rtol=1e-6
            )
        # host backends copy device labels to the host
        np.testing.assert_allclose(sn.triplet_semihard_loss(lab, x, backend="cpu"), want, rtol=1e-6)
    # host backends copy device embeddings to the host too
    np.testing.assert_allclose(
        sn.triplet_semihard_loss(cuda.to_device(labels), cuda.to_device(x), backend="numpy"),
        want,
        rtol=1e-6,
    )


def test_repeated_runs_are_bit_identical():
    labels, x = random_batch(B=48, D=8, classes=3, seed=3)
    x_dev = cuda.to_device(x)
    losses = {sn.triplet_semihard_loss(labels, x_dev, backend="cuda").tobytes() for _ in range(3)}
    assert len(losses) == 1
    grads = {
        sn.triplet_semihard_loss_and_grad(labels, x_dev, backend="cuda")[1].copy_to_host().tobytes()
        for _ in range(2)
    }
    assert len(grads) == 1


def test_float16_is_computed_in_float32():
    labels, x = random_batch(B=16, dtype=np.float16)
    want = sn.triplet_semihard_loss_and_grad(labels, x, backend="python")
    for emb in (x, cuda.to_device(x)):
        loss, grad = sn.triplet_semihard_loss_and_grad(labels, emb, backend="cuda")
        assert loss.dtype == np.float16 and grad.dtype == np.float16
        grad = grad if isinstance(grad, np.ndarray) else grad.copy_to_host()
        np.testing.assert_allclose(loss, want[0], rtol=1e-3)
        np.testing.assert_allclose(
            grad.astype(np.float32), want[1].astype(np.float32), rtol=1e-2, atol=1e-3
        )
    mined = sn.mine_semihard(labels, cuda.to_device(x), backend="cuda")
    assert mined.loss.dtype == np.float32


@pytest.mark.parametrize("metric", METRICS)
def test_float64(metric):
    labels, x = random_batch(B=14, dtype=np.float64, seed=5)
    got = sn.triplet_semihard_loss_and_grad(
        labels, cuda.to_device(x), distance_metric=metric, backend="cuda"
    )
    want = sn.triplet_semihard_loss_and_grad(labels, x, distance_metric=metric, backend="python")
    assert got[0].dtype == np.float64 and got[1].dtype == np.float64
    np.testing.assert_allclose(got[0], want[0], rtol=1e-12)
    np.testing.assert_allclose(got[1].copy_to_host(), want[1], rtol=1e-10, atol=1e-12)


def test_integer_and_strided_device_input():
    labels, x = random_batch(B=12)
    xi = np.round(x * 4).astype(np.int32)
    want = sn.triplet_semihard_loss(labels, xi, backend="python")
    got = sn.triplet_semihard_loss(labels, cuda.to_device(xi), backend="cuda")
    assert got.dtype == np.float64 and got == pytest.approx(want, rel=1e-12)
    wide = cuda.to_device(np.repeat(x, 2, axis=1))
    strided = wide[:, ::2]  # a non-contiguous view
    np.testing.assert_allclose(
        sn.triplet_semihard_loss(labels, strided, backend="cuda"),
        sn.triplet_semihard_loss(labels, x[:, :], backend="python"),
        rtol=1e-6,
    )


def test_nonfinite_device_input_is_caught_on_the_device(monkeypatch):
    # Under the simulator NaN arithmetic warns; the first warning would add __warningregistry__ to
    # the kernels' globals while other simulated threads iterate them (a simulator race): create it.
    monkeypatch.setattr(kernels, "__warningregistry__", {}, raising=False)
    labels, x = random_batch(B=10)
    x[3, 1] = np.nan
    x[7, 0] = np.inf
    with pytest.raises(ValueError, match=r"rows \[3, 7\]"):
        sn.triplet_semihard_loss(labels, cuda.to_device(x), backend="cuda")
    # check_finite=False skips that check; the overflow check of "L2" still sees the inf row
    with pytest.raises(ValueError, match=r"squared norms of embedding rows \[7\] overflow"):
        sn.triplet_semihard_loss(labels, cuda.to_device(x), backend="cuda", check_finite=False)
    x[7, 0] = 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        sn.triplet_semihard_loss(labels, cuda.to_device(x), backend="cuda", check_finite=False)


def test_validation_of_device_input():
    labels, x = random_batch(B=10)
    with pytest.raises(ValueError, match="disagree on the batch size"):
        sn.triplet_semihard_loss(labels[:9], cuda.to_device(x), backend="cuda")
    with pytest.raises(ValueError, match="2-D"):
        sn.triplet_semihard_loss(
            labels, cuda.to_device(np.ascontiguousarray(x[:, 0])), backend="cuda"
        )
    with pytest.raises(ValueError, match="margin must be finite"):
        sn.triplet_semihard_loss(labels, cuda.to_device(x), margin=np.inf, backend="cuda")
    with pytest.raises(ValueError, match="unknown distance_metric"):
        sn.triplet_semihard_loss(labels, cuda.to_device(x), distance_metric="L1", backend="cuda")


def test_callable_metric_gets_and_returns_device_arrays():
    labels, x = random_batch(B=12)
    D = sn._distances.pairwise_distances(x, "L2")
    seen = []

    def metric(x_dev):
        seen.append(x_dev)
        return cuda.to_device(D)

    got = sn.mine_semihard(labels, x, distance_metric=metric, backend="cuda")
    assert _cuda.is_device_array(seen[0])
    want = sn.mine_semihard(labels, x, distance_metric="L2", backend="python")
    np.testing.assert_array_equal(got.negative, want.negative)
    np.testing.assert_allclose(
        sn.triplet_semihard_loss(labels, x, distance_metric=metric, backend="cuda"),
        sn.triplet_semihard_loss(labels, x, backend="python"),
        rtol=1e-6,
    )
    with pytest.raises(ValueError, match=r"\(12, 12\) matrix"):
        sn.triplet_semihard_loss(
            labels, x, distance_metric=lambda _: cuda.to_device(D[:5]), backend="cuda"
        )
    with pytest.raises(ValueError, match="NaN or infinite distances"):
        sn.triplet_semihard_loss(
            labels, x, distance_metric=lambda _: cuda.to_device(D * np.nan), backend="cuda"
        )


def test_no_positive_pair_and_single_class():
    x = random_batch(B=6)[1]
    assert sn.triplet_semihard_loss(np.arange(6), cuda.to_device(x), backend="cuda") == 0.0
    loss, grad = sn.triplet_semihard_loss_and_grad(np.arange(6), cuda.to_device(x), backend="cuda")
    assert loss == 0.0 and not grad.copy_to_host().any()
    assert len(sn.mine_semihard(np.arange(6), cuda.to_device(x), backend="cuda")) == 0
    for metric in METRICS:  # one class: no negative at all, TFA uses the row minimum
        compare_with_python(np.zeros(6, dtype=int), x, metric, 1.0)


def test_overflowing_squared_norms_raise_and_angular_normalises_huge_rows(monkeypatch):
    monkeypatch.setattr(kernels, "__warningregistry__", {}, raising=False)  # as above
    labels, x = random_batch(B=12)
    big = x * np.float32(1e20)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the simulator's float32 overflow
        for metric in ("L2", "squared-L2"):
            with pytest.raises(ValueError, match=r"squared norms of embedding rows .* overflow"):
                sn.triplet_semihard_loss(labels, cuda.to_device(big), 1.0, metric, backend="cuda")
        want = sn.triplet_semihard_loss(labels, x, 1.0, "angular", backend="python")
        for emb in (big, cuda.to_device(big)):
            got = sn.triplet_semihard_loss(labels, emb, 1.0, "angular", backend="cuda")
            assert got == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("rule", sorted(OTHER_RULES) + ["semihard"])
def test_anchors_and_blocks_on_the_device(rule, monkeypatch):
    """Blocks of 5 anchors (B = 13): every rule, a subset of anchors, the three reductions."""
    monkeypatch.setenv("SEMIHARD_NUMBA_BLOCK_BYTES", str(5 * 13 * 4))
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 3, 13)
    x = (rng.integers(-4, 5, size=(13, 3)) / 2).astype(np.float32)  # exact sums: no near-ties
    function, options = OTHER_RULES.get(rule, (sn.triplet_semihard_loss_and_grad, {}))
    anchors = [0, 2, 3, 5, 7, 8, 9, 12]
    kwargs = dict(margin=0.5, anchors=anchors, return_stats=True, **options)
    for reduction in ("mean", "sum"):
        got = function(labels, x, backend="cuda", reduction=reduction, **kwargs)
        want = function(labels, x, backend="python", reduction=reduction, **kwargs)
        assert got[2] == want[2]
        np.testing.assert_allclose(got[0], want[0], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    loss = getattr(sn, function.__name__.removesuffix("_and_grad"))
    values = loss(labels, cuda.to_device(x), backend="cuda", reduction="none", **kwargs)[0]
    want = loss(labels, x, backend="python", reduction="none", **kwargs)[0]
    np.testing.assert_allclose(values.copy_to_host(), want, rtol=1e-6, atol=1e-6)
    mined = sn.mine_semihard(labels, x, 0.5, backend="cuda", anchors=anchors)
    expected = sn.mine_semihard(labels, x, 0.5, backend="python", anchors=anchors)
    for field in ("anchor", "positive", "negative", "semihard"):
        np.testing.assert_array_equal(getattr(mined, field), getattr(expected, field))


@pytest.mark.skipif(not SIMULATOR, reason="a real GPU's fused multiply-adds round it either way")
def test_a_near_tie_can_choose_another_negative_than_blas_does():
    """The README's definition: "cuda" sums the Gram matrix in another order than BLAS, so two
    distances one float32 ulp apart can compare the other way, and that pair takes another
    negative. Row 4 (class 1) is exactly as far from row 0 as row 1 (class 0) is, up to rounding:
    its offset from row 0 is row 1's, permuted. Exactly that pair differs, by a near-tie the
    float64 distances show, and float64 input agrees."""
    rng = np.random.default_rng(51)
    x = rng.random((20, 11), dtype=np.float32)
    labels = np.repeat(np.arange(5), 4)
    x[4] = x[0] + (x[1] - x[0])[rng.permutation(11)]
    on_gpu, on_cpu = (sn.mine_semihard(labels, x, backend=b) for b in ("cuda", "cpu"))
    differ = np.flatnonzero(on_gpu.negative != on_cpu.negative)
    assert differ.tolist() == [0]
    assert (on_gpu.anchor[0], on_gpu.positive[0], on_gpu.negative[0]) == (0, 1, 4)
    x64 = x.astype(np.float64)
    d_ap, d_an = (np.linalg.norm(x64[0] - x64[j]) for j in (1, 4))
    assert 0 < d_ap - d_an < np.spacing(np.float32(d_ap))  # 4 is not semi-hard, by < 1 ulp
    assert on_cpu.negative[0] != 4  # BLAS's rounding agrees with float64 here; "cuda"'s does not
    others = np.arange(1, on_gpu.loss.size)
    np.testing.assert_allclose(on_gpu.loss[others], on_cpu.loss[others], rtol=1e-5, atol=1e-6)
    pairs = on_gpu.loss.size
    gap = sn.triplet_semihard_loss(labels, x, backend="cuda") - sn.triplet_semihard_loss(
        labels, x, backend="cpu"
    )
    np.testing.assert_allclose(gap, (on_gpu.loss[0] - on_cpu.loss[0]) / pairs, atol=1e-6)
    assert 0 < gap <= 1.0 / pairs  # at most margin / pairs
    exact = [sn.triplet_semihard_loss(labels, x64, backend=b) for b in ("cuda", "cpu")]
    np.testing.assert_allclose(exact[0], exact[1], rtol=1e-12)

"""Properties specific to the compiled "cpu" backend: its chunks, its two searches, its order
keys, its cache and its behaviour in forked processes."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numba
import numpy as np
import pytest

import semihard_numba as sn

import cpu_paths
from semihard_numba import _cpu
from semihard_numba._batches import clustered_batch
from semihard_numba._cache import SOURCES
from semihard_numba._inputs import host_batch
from semihard_numba._rules import Rule
from semihard_numba._sorted_search import semihard_negatives

from cpu_paths import LINEAR, SORTED


def small_batch(B, per_class, seed=0):
    return clustered_batch(B, per_class, dim=16, noise=0.7, seed=seed)


@pytest.mark.parametrize(
    "per_class", [4, 64]
)  # post's loop / sorted search, sparse / dense backward
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_bit_identical_whatever_the_thread_count(per_class, metric, monkeypatch):
    monkeypatch.setattr(_cpu, "SERIAL_MAX_BATCH", 0)  # small batches would run on one thread
    labels, x = small_batch(512, per_class)
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


@pytest.mark.parametrize("per_class", [4, 64])
def test_chunks_of_any_size_give_the_same_result(per_class, monkeypatch):
    """One chunk (the Gram product on BLAS's threads) or chunks of 1, 7 and 64 anchors (their
    own one-thread products): the same mined negatives, and the same loss and gradient up to
    the rounding of the product."""
    monkeypatch.setattr(_cpu, "SERIAL_MAX_BATCH", 0)
    batch = host_batch(*small_batch(300, per_class, seed=1), 1.0, "L2")
    one = _cpu.evaluate(batch, Rule("semihard"), True, rows_per_chunk=300)
    one_mined = _cpu.mine(batch, rows_per_chunk=300)
    for rows in (1, 7, 64):
        chunked = _cpu.evaluate(batch, Rule("semihard"), True, rows_per_chunk=rows)
        assert chunked[0] == pytest.approx(one[0], rel=1e-6) and one[0] > 0
        assert chunked[1] == one[1]  # the counts
        np.testing.assert_allclose(chunked[2], one[2], rtol=1e-5, atol=1e-7)
        mined = _cpu.mine(batch, rows_per_chunk=rows)
        np.testing.assert_array_equal(mined.negative, one_mined.negative)


@pytest.mark.parametrize("per_class", [2, 8, 256])
def test_large_batches_agree_with_the_vectorized_port(per_class):
    labels, x = small_batch(256, per_class, seed=per_class)
    for metric in ("L2", "angular"):
        cpu = sn.triplet_semihard_loss(labels, x, 1.0, metric, backend="cpu")
        vectorized = sn.triplet_semihard_loss(labels, x, 1.0, metric, backend="numpy")
        assert cpu == pytest.approx(vectorized, rel=1e-6)


CACHED_RUN = """
import numpy as np, semihard_numba as sn
labels = np.repeat(np.arange(16), 4)
x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
from semihard_numba import _cpu
_cpu.SERIAL_MAX_BATCH = 0  # chunks on the library's threads
loss, grad = sn.triplet_semihard_loss_and_grad(labels, x)
print(repr(float(loss)), repr(float(np.abs(grad).sum())))
"""


@pytest.mark.full  # slow: the full tier (tests/tiers.py)
def test_on_disk_cache_serves_processes_with_another_thread_count(tmp_path):
    """The kernels are cached: compile with 2 threads, then load with 1 and with 2, and get the
    same bits."""
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
    index_files = {p.name.split("-")[0] for p in tmp_path.rglob("*.nbi")}
    kernel = "_cpu._semihard_loops.locals._semihard_loop"
    assert f"{kernel}_{SOURCES}" in index_files


def test_an_edit_of_a_called_module_is_never_served_stale_from_the_cache(tmp_path):
    """Numba keys its cache on the file that defines a kernel: after an edit of _metrics.py, a
    cached kernel of _cpu.py would run the old distance. The digest of the sources in every
    cache name makes the edited package compile afresh."""
    package = tmp_path / "semihard_numba"
    shutil.copytree(Path(sn.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    run = [
        sys.executable,
        "-c",
        "import semihard_numba as sn; print(float(sn.triplet_semihard_loss([0, 0, 1, 1], [[0.0], [1.0], [1.5], [4.0]])))",
    ]
    env = dict(os.environ, PYTHONPATH=str(tmp_path), SEMIHARD_NUMBA_CACHE="1")
    env.pop("NUMBA_CACHE_DIR", None)
    before = subprocess.run(run, env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    before = before.stdout
    assert list(package.glob("__pycache__/*.nbi")), "nothing was cached"
    metrics = package / "_metrics.py"
    source = metrics.read_text()
    assert "    return math.sqrt(d2) if metric == L2 else d2" in source
    metrics.write_text(source.replace("math.sqrt(d2) if", "math.sqrt(d2 + d2) if"))  # D * sqrt(2)
    after = subprocess.run(run, env=env, cwd=tmp_path, capture_output=True, text=True, check=True)
    assert float(after.stdout) != float(before)


FORKED_RUN = """
import multiprocessing, numpy as np, semihard_numba as sn
from semihard_numba import _cpu, _threads
_cpu.SERIAL_MAX_BATCH = 0  # chunks on the library's threads, whatever the batch size
labels = np.repeat(np.arange(50), 4)
x = np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32)
parent = sn.triplet_semihard_loss_and_grad(labels, x)
_threads.run_chunks(lambda c: None, 2, 2)  # the parent's pool has a thread, whatever the count
assert _threads._pool is not None

def child(queue):
    fresh = _threads._pool is None  # the parent's pool threads do not exist here
    loss, grad = sn.triplet_semihard_loss_and_grad(labels, x)
    queue.put((float(loss), grad.tobytes(), fresh))

context = multiprocessing.get_context("fork")
queue = context.Queue()
process = context.Process(target=child, args=(queue,))
process.start()
loss, grad, fresh = queue.get(timeout=120)
process.join(timeout=120)
assert process.exitcode == 0, process.exitcode
assert loss == float(parent[0]) and grad == parent[1].tobytes()
assert fresh  # the child made a pool of its own
print("forked child ok")
"""


@pytest.mark.skipif(sys.platform == "win32", reason="fork is POSIX")
def test_a_forked_child_computes_the_loss():
    """A forked child has none of its parent's pool threads: it starts its own and gets the
    parent's numbers."""
    run = subprocess.run(
        [sys.executable, "-c", FORKED_RUN], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "forked child ok" in run.stdout


@pytest.mark.parametrize("negatives", ["spread", "clumped"])  # bucket sort / argsort
def test_large_class_searches_match_the_post_loop(negatives):
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1], 60)
    x = rng.standard_normal((120, 6))
    if negatives == "clumped":  # class 1 on three points: buckets far fuller than BUCKET_MAX
        x[60:] = x[60:63][rng.integers(0, 3, 60)]
    batch = host_batch(labels, x.astype(np.float32), 0.5, "L2")
    assert (
        cpu_paths.loss(batch, sorted_search_min_positives=SORTED)
        == cpu_paths.loss(batch, sorted_search_min_positives=LINEAR)
        > 0
    )
    loss_s, grad_s = cpu_paths.loss_and_grad(batch, sorted_search_min_positives=SORTED)
    loss_l, grad_l = cpu_paths.loss_and_grad(batch, sorted_search_min_positives=LINEAR)
    assert loss_s == loss_l
    np.testing.assert_array_equal(grad_s, grad_l)
    for field in ("negative", "semihard", "loss"):
        np.testing.assert_array_equal(
            getattr(cpu_paths.mine(batch, sorted_search_min_positives=SORTED), field),
            getattr(cpu_paths.mine(batch, sorted_search_min_positives=LINEAR), field),
        )


@pytest.mark.parametrize("rule", ["semihard", "batch-all", "all-semihard"])
@pytest.mark.parametrize("want_grad", [False, True])
@pytest.mark.parametrize("override", [None, 5])  # the rule's own threshold / SPEED_UPS's
def test_each_rule_sorts_from_its_own_threshold(rule, want_grad, override, monkeypatch):
    # Two classes of k: k - 1 positives per anchor. The kernel set picked says which path ran.
    own = _cpu.SORTED_SEARCH_MIN_POSITIVES[rule][want_grad]
    threshold = own if override is None else override
    name = "_SEMIHARD_LOOPS" if rule == "semihard" else "_EVERY_TRIPLET_LOOPS"
    loops, picked = getattr(_cpu, name), []

    def recording(sorts):
        def kernel(*args):
            picked.append(sorts)
            return loops[sorts](*args)

        return kernel

    monkeypatch.setattr(_cpu, name, {sorts: recording(sorts) for sorts in (False, True)})
    x = np.random.default_rng(0).standard_normal((2 * (threshold + 1), 8)).astype(np.float32)
    for k, sorts in ((threshold, False), (threshold + 1, True)):
        batch = host_batch(np.repeat([0, 1], k), x[: 2 * k], 1.0, "L2")
        _cpu.evaluate(batch, Rule(rule), want_grad, sorted_search_min_positives=override)
        assert picked[-1] is sorts, (k, threshold)


@pytest.mark.parametrize("scale", [1e-300, 1e-307, 1e-320])  # tiny spans of keys
def test_large_class_search_with_tiny_distances(scale):
    from semihard_numba._distances import pairwise_distances

    labels = np.repeat([0, 1], 40)
    x = np.random.default_rng(0).standard_normal((80, 4))
    batch = host_batch(labels, x, 0.0, lambda y: pairwise_distances(y, "L2") * scale)
    assert (
        cpu_paths.loss(batch, sorted_search_min_positives=SORTED)
        == cpu_paths.loss(batch, sorted_search_min_positives=LINEAR)
        > 0
    )
    np.testing.assert_array_equal(
        cpu_paths.mine(batch, sorted_search_min_positives=SORTED).negative,
        cpu_paths.mine(batch, sorted_search_min_positives=LINEAR).negative,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("distances", ["spread", "ties", "negative", "clumped", "all equal"])
def test_sorted_search_is_a_stable_sort_and_a_binary_search(distances, dtype):
    rng = np.random.default_rng(7)
    B = 400
    row = {
        "spread": lambda: rng.gamma(4.0, size=B),
        "ties": lambda: rng.integers(0, 150, B) / 7.0,  # a few per value: buckets still small
        "negative": lambda: rng.standard_normal(B) - 3,  # a callable metric may give these
        "clumped": lambda: rng.integers(0, 3, B) + 1e-3 * rng.random(B),  # the argsort fallback
        "all equal": lambda: np.full(B, 0.5),
    }[distances]().astype(dtype)
    labels = rng.integers(0, 3, B).astype(np.int32)
    a = 0
    negatives = np.flatnonzero(labels != labels[a])
    positives = np.flatnonzero(labels == labels[a])
    first = np.full(B, -1)
    order, run_end = semihard_negatives(row, labels, a, positives, len(negatives), 16, first)
    np.testing.assert_array_equal(order, negatives[np.argsort(row[negatives], kind="stable")])
    sorted_values = row[order]
    for p in positives[positives != a]:
        assert first[p] == np.searchsorted(sorted_values, row[p], side="right")
    for i in range(len(order)):
        end = run_end[i]
        assert (sorted_values[i:end] == sorted_values[i]).all()
        assert end == len(order) or sorted_values[end] > sorted_values[i]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_order_keys_order_floats_like_numpy(dtype):
    rng = np.random.default_rng(3)
    exponents = rng.integers(-30, 30, 3000)
    values = np.concatenate(
        [rng.standard_normal(3000) * 10.0**exponents, [0.0, -0.0, 1.0, -1.0, 1.0]]
    ).astype(dtype)
    keys = _cpu.order_keys(values)
    assert keys.dtype == (np.uint32 if dtype == np.float32 else np.uint64)
    np.testing.assert_array_equal(
        np.argsort(keys, kind="stable"), np.argsort(values, kind="stable")
    )
    assert keys[-5] == keys[-4]  # -0.0 and +0.0 are the same distance
    # distances >= +0.0 need no mapping: their bit patterns are in order already
    positive = np.abs(values) + 0
    bits = positive.view(keys.dtype)
    np.testing.assert_array_equal(
        np.argsort(bits, kind="stable"), np.argsort(positive, kind="stable")
    )


def test_integer_keys_and_the_plain_float_loop_agree():
    for per_class in (4, 64):
        labels, x = small_batch(256, per_class, seed=3)
        batch = host_batch(labels, x, 1.0, "L2")
        for search in (LINEAR, SORTED):
            assert cpu_paths.loss(
                batch, sorted_search_min_positives=search, integer_keys=True
            ) == cpu_paths.loss(batch, sorted_search_min_positives=search, integer_keys=False)


@pytest.mark.parametrize("D", [3, 256, 257])  # plain product / NumPy's syrk
def test_gram_is_x_times_x_transposed(D):
    from semihard_numba._distances import gram

    x = np.random.default_rng(D).standard_normal((300, D)).astype(np.float32)
    exact = x.astype(np.float64) @ x.T.astype(np.float64)
    np.testing.assert_allclose(gram(x), exact, rtol=1e-5, atol=1e-6 * D)  # float32 rounding

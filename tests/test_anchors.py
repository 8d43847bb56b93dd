"""Anchors, reductions and blocks: any rows as anchors against the whole batch, sums that add up
exactly over a partition of the anchors, and blocks of anchors that change nothing."""

import numpy as np
import pytest

import semihard_numba as sn
from semihard_numba import _cpu
from semihard_numba._distances import block_rows
from semihard_numba._inputs import host_batch
from semihard_numba._rules import Rule

BACKENDS = ["python", "numpy", "cpu"]
RULES = {  # (loss, loss_and_grad, keyword arguments)
    "semihard": (sn.triplet_semihard_loss, sn.triplet_semihard_loss_and_grad, {}),
    "hard": (sn.triplet_hard_loss, sn.triplet_hard_loss_and_grad, {}),
    "hard, soft": (sn.triplet_hard_loss, sn.triplet_hard_loss_and_grad, {"soft": True}),
    "batch-all": (sn.triplet_batch_all_loss, sn.triplet_batch_all_loss_and_grad, {}),
    "all-semihard": (sn.triplet_all_semihard_loss, sn.triplet_all_semihard_loss_and_grad, {}),
}


def mixed_batch(seed, B=60):
    """Small classes and one of half the batch (with B = 60, the cpu backend's sorted search)."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.zeros(B // 2, int), rng.integers(1, 10, B - B // 2)])
    rng.shuffle(labels)
    return labels, rng.standard_normal((B, 4))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("metric", ["L2", "angular"])
def test_sums_over_a_partition_of_the_anchors_add_up(rule, backend, metric):
    labels, x = mixed_batch(1)
    _, grad_fn, options = RULES[rule]
    kwargs = dict(margin=0.8, distance_metric=metric, backend=backend, reduction="sum", **options)
    whole, whole_grad, whole_stats = grad_fn(labels, x, return_stats=True, **kwargs)
    shard = np.random.default_rng(2).integers(0, 3, len(labels))  # three uneven shards
    parts = [grad_fn(labels, x, anchors=shard == s, return_stats=True, **kwargs) for s in range(3)]
    assert sum(p[0] for p in parts) == pytest.approx(whole, rel=1e-9)
    grad = sum(p[1] for p in parts)
    assert np.abs(grad - whole_grad).max() <= 1e-9 * np.abs(whole_grad).max()
    for field in ("pairs", "denominator", "active", "semihard"):
        assert sum(getattr(p[2], field) for p in parts) == getattr(whole_stats, field)
    # the mean of the whole from the shards' sums and denominators
    loss = grad_fn(labels, x, **{**kwargs, "reduction": "mean"})[0]
    scale = Rule(rule.split(",")[0], soft="soft" in rule).scale(whole_stats.denominator)
    assert loss == pytest.approx(sum(p[0] for p in parts) * scale, rel=1e-9)


@pytest.mark.parametrize("rule", sorted(RULES))
@pytest.mark.parametrize("rows", [1, 7, 59])
def test_blocks_of_anchors_change_nothing(rule, rows):
    labels, x = mixed_batch(3)
    name = rule.split(",")[0]
    batch = host_batch(labels, x, 0.8, "L2", anchors=np.arange(3, 50))
    for reduction in ("sum", "none"):
        blocks, one = (
            _cpu.evaluate(
                batch, Rule(name, soft="soft" in rule), reduction == "sum", reduction, **o
            )
            for o in ({"rows_per_block": rows}, {})
        )
        assert blocks[1] == one[1]
        np.testing.assert_allclose(blocks[0], one[0], rtol=1e-12)
        if reduction == "sum":
            np.testing.assert_allclose(blocks[2], one[2], rtol=1e-9, atol=1e-12)


def test_the_block_budget_is_read_from_the_environment(monkeypatch):
    labels, x = mixed_batch(4)
    expected = sn.triplet_batch_all_loss_and_grad(labels, x, backend="cpu")
    monkeypatch.setenv("SEMIHARD_NUMBA_BLOCK_BYTES", str(8 * 60 * 5))  # blocks of 5 rows
    assert block_rows(60, 8) == 5
    got = sn.triplet_batch_all_loss_and_grad(labels, x, backend="cpu")
    assert got[0] == pytest.approx(expected[0], rel=1e-12)
    np.testing.assert_allclose(got[1], expected[1], rtol=1e-9, atol=1e-14)
    monkeypatch.setenv("SEMIHARD_NUMBA_BLOCK_BYTES", "1GiB")
    with pytest.raises(ValueError, match="SEMIHARD_NUMBA_BLOCK_BYTES must be a positive number"):
        sn.triplet_batch_all_loss(labels, x, backend="cpu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rule", sorted(RULES))
def test_reduction_none_gives_the_terms_of_the_sum(rule, backend):
    labels, x = mixed_batch(5, B=40)
    loss_fn, _, options = RULES[rule]
    anchors = np.arange(0, 40, 3)
    kwargs = dict(margin=0.8, backend=backend, anchors=anchors, **options)
    values = loss_fn(labels, x, reduction="none", **kwargs)
    total, stats = loss_fn(labels, x, reduction="sum", return_stats=True, **kwargs)
    assert values.dtype == np.float64
    assert len(values) == (len(anchors) if rule.startswith("hard") else stats.pairs)
    assert values.sum() == pytest.approx(total, rel=1e-12)
    if rule == "semihard":  # in mine_semihard's order
        mined = sn.mine_semihard(labels, x, 0.8, backend=backend, anchors=anchors)
        np.testing.assert_array_equal(values, mined.loss)
    python = loss_fn(labels, x, reduction="none", **{**kwargs, "backend": "python"})
    np.testing.assert_allclose(values, python, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_way_of_naming_anchors(backend):
    labels, x = mixed_batch(6, B=12)

    def loss(anchors):
        return sn.triplet_batch_all_loss(labels, x, backend=backend, anchors=anchors)

    mask = np.zeros(12, bool)
    mask[[1, 4, 5, 11]] = True
    expected = loss(mask)
    assert loss([11, 1, 5, 4]) == expected  # a set: the order does not matter
    assert loss(np.array([-1, 1, 4, 5])) == expected  # negative indices count from the end
    assert loss(slice(None)) == loss(None) == sn.triplet_batch_all_loss(labels, x, backend=backend)
    assert loss(slice(0, 12, 3)) == loss([0, 3, 6, 9])
    assert loss(np.int64(4)) == loss([4])
    mined = sn.mine_semihard(labels, x, backend=backend, anchors=mask)
    assert set(mined.anchor) <= {1, 4, 5, 11} and (np.diff(mined.anchor) >= 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_anchor_gives_zero(backend):
    labels, x = mixed_batch(7, B=12)
    for loss_fn, grad_fn, options in RULES.values():
        assert loss_fn(labels, x, backend=backend, anchors=[], **options) == 0.0
        value, grad = grad_fn(labels, x, backend=backend, anchors=[], reduction="sum", **options)
        assert value == 0 and not grad.any()
        assert (
            len(loss_fn(labels, x, backend=backend, anchors=[], reduction="none", **options)) == 0
        )


class TestBadAnchors:
    labels, x = mixed_batch(8, B=12)

    @pytest.mark.parametrize("anchors", [[12], [0, -13], np.array([3, 20])])
    def test_out_of_range(self, anchors):
        with pytest.raises(IndexError, match=r"out of range for B = 12"):
            sn.triplet_semihard_loss(self.labels, self.x, anchors=anchors)

    def test_a_mask_of_the_wrong_length(self):
        with pytest.raises(ValueError, match=r"B = 12; got shape \(11,\)"):
            sn.mine_semihard(self.labels, self.x, anchors=np.ones(11, bool))

    @pytest.mark.parametrize("anchors", [np.array([1.0, 2.0]), [[1, 2]], "rows"])
    def test_neither_indices_nor_a_mask(self, anchors):
        with pytest.raises(IndexError, match=r"integer row indices or a boolean mask of B = 12"):
            sn.triplet_hard_loss(self.labels, self.x, anchors=anchors)

    def test_repeated_rows(self):
        with pytest.raises(ValueError, match=r"anchors repeat rows \[3\]"):
            sn.triplet_batch_all_loss(self.labels, self.x, anchors=[3, 1, 3])


class TestBadReductions:
    labels, x = mixed_batch(9, B=12)

    @pytest.mark.parametrize("reduction", ["avg", None, "MEAN"])
    def test_unknown(self, reduction):
        with pytest.raises(ValueError, match="unknown reduction"):
            sn.triplet_all_semihard_loss(self.labels, self.x, reduction=reduction)

    def test_none_has_no_gradient(self):
        with pytest.raises(ValueError, match="the gradient needs a scalar loss"):
            sn.triplet_semihard_loss_and_grad(self.labels, self.x, reduction="none")

"""The four rules on batches small enough to work out by hand, their TripletStats, and TFA's edge
values of the hard rule."""

import math

import numpy as np
import pytest

import semihard_numba as sn
from semihard_numba import TripletStats

BACKENDS = ["python", "numpy", "cpu"]

# README, "Which rule?": anchor 0 at 0 and its positive 1 at 1; three negatives, each of its own
# class, at 1.5, 1.8 and 3.0; margin 1.
LABELS = [0, 0, 1, 2, 3]
X = [[0.0], [1.0], [1.5], [1.8], [3.0]]
EXPECTED = {
    # (0, 1) takes 1.5: 0.5; (1, 0) takes 3.0, the first negative beyond 1 from it: 0
    sn.triplet_semihard_loss: (0.25, TripletStats(pairs=2, denominator=2, active=1, semihard=2)),
    # anchors 0 and 1: 1 - 1.5 + 1 and 1 - 0.5 + 1; anchors 2, 3, 4 have no positive: TFA's
    # hp = 0 (the diagonal), hn = 0.3, 0.3, 1.2: 0.7, 0.7, 0
    sn.triplet_hard_loss: (3.4 / 5, TripletStats(pairs=2, denominator=5, active=4, semihard=4)),
    # every triplet: 0.5, 0.2, 0 from (0, 1); 1.5, 1.2, 0 from (1, 0): four losses above 1e-16
    sn.triplet_batch_all_loss: (
        3.4 / 4,
        TripletStats(pairs=2, denominator=4, active=4, semihard=4),
    ),
    # 0 < d_an - d_ap <= 1: (0, 1, 2) and (0, 1, 3) with losses 0.5 and 0.2; (1, 0, 4) sits at the
    # margin, with a loss of 0
    sn.triplet_all_semihard_loss: (
        0.7 / 2,
        TripletStats(pairs=2, denominator=2, active=2, semihard=4),
    ),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("function", EXPECTED, ids=lambda f: f.__name__)
def test_the_rules_on_a_batch_worked_out_by_hand(function, backend):
    loss, stats = function(LABELS, X, backend=backend, return_stats=True)
    expected_loss, expected_stats = EXPECTED[function]
    assert loss == pytest.approx(expected_loss, rel=1e-6)
    assert stats == expected_stats
    assert function(LABELS, X, backend=backend) == loss


@pytest.mark.parametrize("backend", BACKENDS)
def test_and_grad_twins_return_loss_grad_and_stats(backend):
    twins = {
        sn.triplet_semihard_loss: sn.triplet_semihard_loss_and_grad,
        sn.triplet_hard_loss: sn.triplet_hard_loss_and_grad,
        sn.triplet_batch_all_loss: sn.triplet_batch_all_loss_and_grad,
        sn.triplet_all_semihard_loss: sn.triplet_all_semihard_loss_and_grad,
    }
    for function, twin in twins.items():
        loss, grad, stats = twin(LABELS, X, backend=backend, return_stats=True)
        assert (loss, stats) == function(LABELS, X, backend=backend, return_stats=True)
        assert grad.shape == (5, 1) and grad.any()
        assert len(twin(LABELS, X, backend=backend)) == 2


def test_stats_are_frozen():
    stats = sn.triplet_batch_all_loss(LABELS, X, return_stats=True)[1]
    with pytest.raises(AttributeError):
        stats.active = 0


@pytest.mark.parametrize("backend", BACKENDS)
class TestHardRuleEdges:
    """TFA's triplet_hard_loss keeps its edge values (README, "Which rule?")."""

    def test_a_single_point_gives_the_margin_or_log_2(self, backend):
        assert sn.triplet_hard_loss([7], [[1.0, 2.0]], 0.3, backend=backend) == 0.3
        soft = sn.triplet_hard_loss([7], [[1.0, 2.0]], soft=True, backend=backend)
        assert soft == pytest.approx(math.log(2))

    def test_all_distinct_labels_give_a_nonzero_loss(self, backend):
        x = [[0.0], [0.5], [3.0]]  # no positive: hp = 0; hn = 0.5, 0.5, 2.5
        loss, stats = sn.triplet_hard_loss([0, 1, 2], x, backend=backend, return_stats=True)
        assert loss == pytest.approx((0.5 + 0.5 + 0.0) / 3)
        assert stats == TripletStats(pairs=0, denominator=3, active=2, semihard=3)
        assert sn.triplet_semihard_loss([0, 1, 2], x, backend=backend) == 0.0

    def test_one_class_takes_the_row_maximum_as_negative(self, backend):
        x = [[0.0], [1.0], [4.0]]  # hp = 4, 3, 4; hn = the row's maximum: the same
        assert sn.triplet_hard_loss([5, 5, 5], x, 0.5, backend=backend) == 0.5

    def test_soft_ignores_the_margin(self, backend):
        x = np.random.default_rng(0).standard_normal((8, 3))
        labels = [0, 0, 1, 1, 2, 2, 3, 3]
        assert sn.triplet_hard_loss(labels, x, 0.1, True, backend=backend) == sn.triplet_hard_loss(
            labels, x, 2.0, True, backend=backend
        )


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_positive_pair(backend):
    x = np.eye(3)
    for function in (sn.triplet_batch_all_loss_and_grad, sn.triplet_all_semihard_loss_and_grad):
        loss, grad, stats = function([0, 1, 2], x, backend=backend, return_stats=True)
        assert loss == 0.0 and not grad.any() and stats == TripletStats(0, 0, 0, 0)

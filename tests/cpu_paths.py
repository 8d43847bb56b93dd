"""The "cpu" backend with its speed-ups switched on or off, for tests that compare its paths.

Every path must give the same numbers: the post's loop or the sorted search
(sorted_search_min_positives), integer keys or float distances, bucket sort or np.argsort
(bucket_max), the sparse or the dense backward (sparse_backward_max_density)."""

from semihard_numba import _cpu
from semihard_numba._rules import SEMIHARD, Rule

LINEAR, SORTED = 10**9, 0  # sorted_search_min_positives: never / always sort


def loss(batch, rule=SEMIHARD, **options):
    return _cpu.evaluate(batch, Rule(rule), False, **options)[0]


def loss_and_grad(batch, rule=SEMIHARD, **options):
    value, _, grad = _cpu.evaluate(batch, Rule(rule), True, **options)
    return value, grad


def mine(batch, **options):
    return _cpu.mine(batch, **options)

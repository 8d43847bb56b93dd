"""The test suite's two tiers.

- quick (the default, the README's command): every backend, every rule, the gradient and the
  bad-input tests, on a sample of the golden cases (`golden_sample`) and fewer property examples;
- full (``SEMIHARD_NUMBA_TESTS=full``, what CI runs): every golden case on every backend, the
  property tests at full count, and the tests marked ``@pytest.mark.full`` (end-to-end runs of
  the benchmark, every kernel compiled to PTX, ...), which the quick tier deselects.
"""

import os

TIER_ENV = "SEMIHARD_NUMBA_TESTS"
TIER = os.environ.get(TIER_ENV, "quick").strip() or "quick"
if TIER not in ("quick", "full"):
    raise ValueError(f"{TIER_ENV} must be 'quick' or 'full', got {TIER!r}")
FULL = TIER == "full"


def golden_sample(cases):
    """Every case in the full tier. In the quick tier: per (kind, metric, soft), its smallest
    batch, and the largest batch of all: every kind of input and every metric, each at least
    once, at a fraction of the cost."""
    if FULL:
        return list(cases)
    chosen = {}
    for case in cases:
        key = (case.kind, case.metric, case.soft)
        if key not in chosen or len(case.labels) < len(chosen[key].labels):
            chosen[key] = case
    largest = max(cases, key=lambda case: len(case.labels))
    kept = {case.case for case in chosen.values()} | {largest.case}
    return [case for case in cases if case.case in kept]

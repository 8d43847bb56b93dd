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


def golden_sample(cases, largest=True):
    """Every case in the full tier. In the quick tier, for each reference function: per (kind,
    metric, soft) its smallest batch, and (with `largest`) the largest batch of all; plus the
    cases where we test against our own reference (`golden.py`). Every kind of input and every
    metric of every reference, each at least once, at a fraction of the cost."""
    if FULL:
        return list(cases)
    from golden import TF_SOFTPLUS_OVERFLOW_CASES, TF_TIE_LEAK_CASE, TORCH_ROUNDING_CASES

    special = {TF_TIE_LEAK_CASE, *TF_SOFTPLUS_OVERFLOW_CASES, *TORCH_ROUNDING_CASES}
    kept = set()
    for function in {case.function for case in cases}:
        own = [case for case in cases if case.function == function]
        smallest = {}
        for case in own:
            key = (case.kind, case.metric, case.soft)
            if key not in smallest or len(case.labels) < len(smallest[key].labels):
                smallest[key] = case
        biggest = [max(own, key=lambda case: len(case.labels))] if largest else []
        kept |= {(function, case.case) for case in [*smallest.values(), *biggest]}
    return [case for case in cases if (case.function, case.case) in kept or case.case in special]

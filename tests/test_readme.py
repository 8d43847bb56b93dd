"""The README's interactive examples run and print what the README says."""

import doctest
from pathlib import Path

import numpy as np

import semihard_numba


def test_readme_examples():
    readme = Path(__file__).parents[1] / "README.md"
    result = doctest.testfile(
        str(readme),
        module_relative=False,
        globs={"np": np, "sn": semihard_numba},
        optionflags=doctest.NORMALIZE_WHITESPACE,
    )
    assert result.attempted > 0 and result.failed == 0

"""Without Keras, JAX or TensorFlow: the package imports and works, and each integration's
import fails with an ImportError that says which extra to install. Runs everywhere: the
frameworks are hidden from the import system in a subprocess, installed or not."""

import subprocess
import sys

import pytest

HIDE = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {"keras", "jax", "jaxlib", "tensorflow"}:
            raise ImportError(f"No module named {name!r} (hidden by the test)")
sys.meta_path.insert(0, Hide())
"""


@pytest.mark.parametrize(
    "module, extra", [("keras", "keras"), ("jax", "jax"), ("tensorflow", "tensorflow")]
)
def test_import_without_the_framework_names_the_extra(module, extra):
    code = (
        HIDE
        + f"""
import numpy as np
import semihard_numba
assert semihard_numba.triplet_semihard_loss([0, 0, 1], np.eye(3, dtype=np.float32)) > 0
try:
    import semihard_numba.{module}
except ImportError as error:
    print(error)
else:
    raise SystemExit("imported")
"""
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert f'pip install "semihard-numba[{extra}]"' in run.stdout

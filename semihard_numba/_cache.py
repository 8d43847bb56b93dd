"""How the compiled kernels are cached on disk.

SEMIHARD_NUMBA_CACHE=0 turns Numba's on-disk cache off (read at import). Numba keys a cached
function on the file that defines it, not on the files of the functions it calls: after an edit of
`_loop.py`, a kernel of `_cpu.py` cached before would go on running the old loop (a `git pull` on
an editable install does exactly this). `jit` therefore files every function under a name that
carries a digest of the package's sources, so that any change to them gives new entries.

A kernel cached by a process with one thread count loads fine in a process with another
(tests/test_cpu.py checks it).
"""

import hashlib
import os
from pathlib import Path

from numba import njit

CACHE = os.environ.get("SEMIHARD_NUMBA_CACHE", "1") != "0"

SOURCES = hashlib.sha256(
    b"".join(path.read_bytes() for path in sorted(Path(__file__).parent.glob("*.py")))
).hexdigest()[:12]


def jit(function=None, **options):
    """numba.njit(cache=CACHE, **options), filed under the digest of the package's sources."""
    if function is None:
        return lambda function: jit(function, **options)
    function.__qualname__ = f"{function.__qualname__}_{SOURCES}"
    return njit(cache=CACHE, **options)(function)

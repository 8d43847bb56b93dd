"""Whether the compiled CPU kernels are cached on disk: SEMIHARD_NUMBA_CACHE=0 turns it off.

Numba keys the cache on the source file and the argument types, and a kernel cached by a process
with one thread count loads fine in a process with another (tests/test_cpu.py checks it).
"""

import os

CACHE = os.environ.get("SEMIHARD_NUMBA_CACHE", "1") != "0"

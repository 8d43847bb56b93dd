"""A stable radix argsort of floats given as their bit patterns, for Numba kernels.

The "cpu" backend sorts an anchor's negatives with a bucket sort and falls back on this one where
distances clump (a full bucket). Numba's comparison sort took ~300 us for the 4096 distances of one
anchor row; this LSD radix sort on bytes takes a small fraction of that, and being stable it keeps
tied distances in index order.
"""

import numpy as np
from numba import njit

from ._cache import CACHE


@njit(cache=CACHE)
def sign_bit(bits):
    """The sign bit of the floats whose bit patterns `bits` holds, as a uint64."""
    return np.uint64(1) << np.uint64(8 * bits.itemsize - 1)


@njit(cache=CACHE)
def sort_key(bits, sign):
    """An unsigned integer with the same order as the float whose bit pattern is `bits` (IEEE 754:
    set the sign bit of non-negatives, flip every bit of negatives; -0.0 counts as +0.0)."""
    b = np.uint64(bits)
    if b == sign:
        b = np.uint64(0)
    return (b ^ (sign | (sign - np.uint64(1)))) if b & sign else (b | sign)


@njit(cache=CACHE)
def radix_argsort(bits, index):
    """`index` reordered so that the floats with bit patterns bits[index] increase: a stable LSD
    radix sort on bytes. All byte histograms come from one pass, and a byte that is the same in
    every key costs nothing (distances of similar size share their sign and exponent bytes)."""
    n = index.shape[0]
    width = bits.itemsize
    sign = sign_bit(bits)
    keys = np.empty(n, dtype=np.uint64)
    for i in range(n):
        keys[i] = sort_key(bits[index[i]], sign)
    count = np.zeros((width, 257), dtype=np.int64)
    for i in range(n):
        key = keys[i]
        for byte in range(width):
            count[byte, ((key >> np.uint64(8 * byte)) & np.uint64(255)) + 1] += 1
    keys_out = np.empty_like(keys)
    index_out = np.empty_like(index)
    for byte in range(width):
        if count[byte].max() == n:  # every key has the same byte here: order unchanged
            continue
        for d in range(256):
            count[byte, d + 1] += count[byte, d]
        shift = np.uint64(8 * byte)
        for i in range(n):
            d = (keys[i] >> shift) & np.uint64(255)
            keys_out[count[byte, d]] = keys[i]
            index_out[count[byte, d]] = index[i]
            count[byte, d] += 1
        keys, keys_out = keys_out, keys
        index, index_out = index_out, index
    return index

"""The "cuda" backend's device code: numba.cuda kernels (the host driver is `_cuda.py`).

The kernels call the same Numba functions as the "cpu" backend: `_metrics.distance` turns each
Gram entry into TFA's distance, `_loop.choose_negative` (the post's loop) finds each pair's
negative, `_metrics.pre_distance_gradient` applies the chain rule. numba.cuda compiles them for the
device on first use. The CUDA simulator cannot hand its arrays to compiled code, so under it the
kernels call the functions' Python source (`py_func`), which is the same code.

Kernel factories take the compute dtype and launch sizes and are cached: every constant a kernel
uses is fixed when it is built, never read from a module global that may change.
"""

import functools
import math

import numba
import numpy as np
from numba import cuda

from ._device import simulator_enabled
from ._distances import L2_NORMALIZE_EPSILON
from ._loop import choose_negative, count_negatives_at, smallest_entry
from ._metrics import ANGULAR, distance, pre_distance_gradient


def _on_device(function):
    """A shared Numba function as a kernel calls it: itself, or its Python source under the
    simulator."""
    return function.py_func if simulator_enabled() else function


_choose_negative = _on_device(choose_negative)
_count_negatives_at = _on_device(count_negatives_at)
_smallest_entry = _on_device(smallest_entry)
_distance = _on_device(distance)
_pre_distance_gradient = _on_device(pre_distance_gradient)


def _nb(dtype):
    return numba.from_dtype(np.dtype(dtype))


@cuda.jit
def copy_kernel(src, dst):
    """dst[i, j] = src[i, j], converting the dtype (any strides)."""
    j0, i0 = cuda.grid(2)
    sj, si = cuda.gridsize(2)
    for i in range(i0, dst.shape[0], si):
        for j in range(j0, dst.shape[1], sj):
            dst[i, j] = src[i, j]


@cuda.jit
def nonfinite_rows_kernel(x, bad):
    """bad[i] = 1 where row i holds NaN or inf."""
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        flag = 0
        for k in range(x.shape[1]):
            if not math.isfinite(x[i, k]):
                flag = 1
        bad[i] = flag


@functools.lru_cache(maxsize=None)
def elementwise_kernels(dtype):
    """(row_norms, symmetrize, finish_squared, finish_angular) for compute dtype `dtype`."""
    nbtype = _nb(dtype)

    @cuda.jit
    def row_norms(x, metric, sq, normalized, inv_norm):
        """sq[i] = |x_i|^2; for "angular" also n_i = x_i r_i, r_i = rsqrt(max(|x_i|^2, eps)) as
        `_distances._normalized`: a row whose squared norm overflows is divided by its largest
        entry first."""
        one = nbtype(1)
        eps = nbtype(L2_NORMALIZE_EPSILON)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            s = nbtype(0)
            for k in range(x.shape[1]):
                s += x[i, k] * x[i, k]
            sq[i] = s
            if metric == ANGULAR:
                scale = one
                if math.isinf(s):
                    scale = nbtype(0)
                    for k in range(x.shape[1]):
                        scale = abs(x[i, k]) if abs(x[i, k]) > scale else scale
                    s = nbtype(0)
                    for k in range(x.shape[1]):
                        s += (x[i, k] / scale) * (x[i, k] / scale)
                r = one / nbtype(math.sqrt(s if s > eps else eps))
                inv_norm[i] = r / scale
                for k in range(x.shape[1]):
                    normalized[i, k] = (x[i, k] / scale) * r

    @cuda.jit
    def symmetrize(P, count):
        """P <- P / count + (P / count)^T, in place (each thread owns the pair (i, j), i <= j)."""
        j0, i0 = cuda.grid(2)
        sj, si = cuda.gridsize(2)
        for i in range(i0, P.shape[0], si):
            for j in range(j0, P.shape[1], sj):
                if i < j:
                    s = P[i, j] / count + P[j, i] / count
                    P[i, j] = s
                    P[j, i] = s
                elif i == j:
                    v = P[i, i] / count
                    P[i, i] = v + v

    @cuda.jit
    def finish_squared(x, rowsum, SX, grad):
        """grad = 2 (rowsum_i x_i - (S x)_i): the chain rule through d2 = |x_i|^2 + |x_j|^2 - 2 x_i.x_j."""
        two = nbtype(2)
        j0, i0 = cuda.grid(2)
        sj, si = cuda.gridsize(2)
        for i in range(i0, x.shape[0], si):
            for j in range(j0, x.shape[1], sj):
                grad[i, j] = two * (rowsum[i] * x[i, j] - SX[i, j])

    @cuda.jit
    def finish_angular(normalized, sq, inv_norm, grad_n, grad):
        """grad = (grad_n - (grad_n . n) n) r: through n = x r, r = rsqrt(max(|x|^2, eps))."""
        eps = nbtype(L2_NORMALIZE_EPSILON)
        zero = nbtype(0)
        for i in range(cuda.grid(1), grad.shape[0], cuda.gridsize(1)):
            radial = zero
            if sq[i] >= eps:
                for k in range(grad.shape[1]):
                    radial += grad_n[i, k] * normalized[i, k]
            r = inv_norm[i]
            for k in range(grad.shape[1]):
                grad[i, k] = (grad_n[i, k] - radial * normalized[i, k]) * r

    return row_norms, symmetrize, finish_squared, finish_angular


@functools.lru_cache(maxsize=None)
def matmul_kernel(dtype, tile, reg, gram):
    """A register-tiled product on blocks of tile x tile threads, each computing reg x reg outputs.

    gram=True: out[i, j] = distance(sum_k A[i, k] A[j, k]) (Bm is A: the Gram matrix x x^T, turned
    into TFA's distances by `_metrics.distance`). gram=False: out = A @ Bm.
    Every entry is summed over k in increasing order, so the Gram matrix is exactly symmetric.
    """
    nbtype = _nb(dtype)
    T, R = tile, reg
    BM = T * R  # rows and columns of `out` per block
    BM1 = BM + 1  # padded shared rows: no bank conflicts; a compile-time constant

    @cuda.jit
    def kernel(A, Bm, sq, metric, out):
        sA = cuda.shared.array((T, BM1), nbtype)  # sA[k, m] = A[row0 + m, k0 + k]
        sB = cuda.shared.array((T, BM1), nbtype)
        acc = cuda.local.array((R, R), nbtype)
        a_reg = cuda.local.array(R, nbtype)
        b_reg = cuda.local.array(R, nbtype)
        zero = nbtype(0)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        M = out.shape[0]
        N = out.shape[1]
        K = A.shape[1]
        for bi in range(cuda.blockIdx.y, (M + BM - 1) // BM, cuda.gridDim.y):
            for bj in range(cuda.blockIdx.x, (N + BM - 1) // BM, cuda.gridDim.x):
                row0 = bi * BM
                col0 = bj * BM
                for r in range(R):
                    for c in range(R):
                        acc[r, c] = zero
                for k0 in range(0, K, T):
                    for r in range(R):
                        m = ty + r * T
                        i = row0 + m
                        k = k0 + tx
                        sA[tx, m] = A[i, k] if i < M and k < K else zero
                        if gram:
                            j = col0 + m
                            sB[tx, m] = A[j, k] if j < N and k < K else zero
                        else:
                            kk = k0 + ty
                            j = col0 + tx + r * T
                            sB[ty, tx + r * T] = Bm[kk, j] if kk < K and j < N else zero
                    cuda.syncthreads()
                    for kk in range(T):
                        for r in range(R):
                            a_reg[r] = sA[kk, ty + r * T]
                            b_reg[r] = sB[kk, tx + r * T]
                        for r in range(R):
                            for c in range(R):
                                acc[r, c] += a_reg[r] * b_reg[c]
                    cuda.syncthreads()
                for r in range(R):
                    i = row0 + ty + r * T
                    for c in range(R):
                        j = col0 + tx + c * T
                        if i < M and j < N:
                            if gram:
                                out[i, j] = _distance(acc[r, c], sq, i, j, metric)
                            else:
                                out[i, j] = acc[r, c]

    return kernel


@functools.lru_cache(maxsize=None)
def mining_kernel(dtype, threads, want_mine, want_grad):
    """The post's positive loop, one block of `threads` threads per anchor (grid-stride over
    anchors), each thread taking positives t, t + threads, ... of its anchor.

    kernel(D, classes, margin, metric, anchor_loss, mined, chosen):
    - D: the (B, B) distance matrix; classes = (codes, members, start, position, pair_offset) of
      `_classes.Classes`;
    - anchor_loss[a]: a's sum of triplet losses, in float64, added in a fixed order;
    - with want_mine, mined = (anchor, positive, negative, semihard, loss): one entry per pair;
    - with want_grad, chosen = (distance, ties) per pair: the chosen negative's distance and how
      many negatives tie at it (0 for a pair off the hinge); then row a of D is overwritten with
      dL/dP[a, :] times the number of pairs, by the rule of the "cpu" backend.
    """
    nbtype = _nb(dtype)
    T = threads

    @cuda.jit
    def kernel(D, classes, margin, metric, anchor_loss, mined, chosen):
        s_sum = cuda.shared.array(T, numba.float64)
        s_active = cuda.shared.array(T, numba.int64)
        s_smallest = cuda.shared.array(1, nbtype)  # without negatives: the row's minimum
        s_smallest_ties = cuda.shared.array(1, numba.int64)
        codes, members, start, position, pair_offset = classes
        above, below = nbtype(math.inf), nbtype(-math.inf)
        zero = nbtype(0)
        t = cuda.threadIdx.x
        B = D.shape[0]
        for a in range(cuda.blockIdx.x, B, cuda.gridDim.x):
            distances = D[a]
            first = start[codes[a]]
            n_positives = start[codes[a] + 1] - first - 1
            q = position[a]  # a's place among the members of its class
            total = 0.0
            active = 0
            for k in range(t, n_positives, T):  # try this thread's positives for the anchor
                p = members[first + (k if k < q else k + 1)]  # positive cannot be the anchor
                if n_positives + 1 == B:  # no negative: TFA's masked maximum is the row's min
                    n0, semihard = -1, False
                    smallest, ties = _smallest_entry(distances)
                    d_an = distances[smallest]
                else:
                    n0, semihard = _choose_negative(distances, codes, a, p, above, below)
                    d_an = distances[n0]
                l = margin + (distances[p] - d_an)
                hinge = l if l > zero else zero
                total += numba.float64(hinge)
                pair = pair_offset[a] + k
                if want_mine:
                    mined[0][pair] = a
                    mined[1][pair] = p
                    mined[2][pair] = n0
                    mined[3][pair] = semihard
                    mined[4][pair] = hinge
                if want_grad:
                    chosen[0][pair] = d_an
                    chosen[1][pair] = 0
                    if l >= zero:  # on the hinge TF's maximum still passes gradient
                        active += 1
                        if n0 >= 0:
                            ties = _count_negatives_at(distances, codes, a, n0)
                        chosen[1][pair] = ties
            s_sum[t] = total
            s_active[t] = active
            cuda.syncthreads()
            if t == 0:  # the threads' sums in a fixed order
                for u in range(1, T):
                    total += s_sum[u]
                    active += s_active[u]
                anchor_loss[a] = total
                s_active[0] = active
                if n_positives + 1 == B:
                    smallest, ties = _smallest_entry(distances)
                    s_smallest[0] = distances[smallest]
                    s_smallest_ties[0] = ties
            cuda.syncthreads()

            # dL/dD for row a, one column per thread: +1 at each active positive, and each
            # active pair's -1 shared equally by the negatives tied at its chosen distance.
            if want_grad:
                n_active = s_active[0]
                for n in range(t, B, T):
                    g = zero
                    if codes[n] == codes[a] and n != a:
                        qn = position[n]
                        if chosen[1][pair_offset[a] + (qn if qn < q else qn - 1)] > 0:
                            g += nbtype(1)
                    if n_positives + 1 == B:
                        if distances[n] == s_smallest[0]:
                            g -= nbtype(n_active) / nbtype(s_smallest_ties[0])
                    elif codes[n] != codes[a]:
                        for k in range(n_positives):
                            pair = pair_offset[a] + k
                            ties = chosen[1][pair]
                            if ties > 0 and distances[n] == chosen[0][pair]:
                                g -= nbtype(1) / nbtype(ties)
                    D[a, n] = _pre_distance_gradient(g, distances[n], metric, D)
            cuda.syncthreads()

    return kernel


@functools.lru_cache(maxsize=None)
def sum_kernel(threads):
    """out[0] = sum of values (float64) in a fixed order, one block."""
    T = threads

    @cuda.jit
    def kernel(values, out):
        s = cuda.shared.array(T, numba.float64)
        t = cuda.threadIdx.x
        acc = 0.0
        for i in range(t, values.shape[0], T):
            acc += values[i]
        s[t] = acc
        cuda.syncthreads()
        if t == 0:
            for u in range(1, T):
                acc += s[u]
            out[0] = acc

    return kernel


@functools.lru_cache(maxsize=None)
def rowsum_kernel(dtype, threads):
    """out[i] = sum_j S[i, j], accumulated in float64 in a fixed order; one block per row."""
    nbtype = _nb(dtype)
    T = threads

    @cuda.jit
    def kernel(S, out):
        s = cuda.shared.array(T, numba.float64)
        t = cuda.threadIdx.x
        for i in range(cuda.blockIdx.x, S.shape[0], cuda.gridDim.x):
            acc = 0.0
            for j in range(t, S.shape[1], T):
                acc += numba.float64(S[i, j])
            s[t] = acc
            cuda.syncthreads()
            if t == 0:
                for u in range(1, T):
                    acc += s[u]
                out[i] = nbtype(acc)
            cuda.syncthreads()

    return kernel

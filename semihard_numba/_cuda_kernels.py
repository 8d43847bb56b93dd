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
from ._loop import (
    BATCH_ALL_CODE,
    choose_negative,
    count_negatives_at,
    hard_candidate,
    hardest_pair,
    pair_triplets,
    passing_positives,
    smallest_entry,
)
from ._metrics import ANGULAR, distance, pre_distance_gradient
from ._rules import BATCH_ALL_EPSILON


def _on_device(function):
    """A shared Numba function as a kernel calls it: itself, or its Python source under the
    simulator."""
    return function.py_func if simulator_enabled() else function


_choose_negative = _on_device(choose_negative)
_count_negatives_at = _on_device(count_negatives_at)
_smallest_entry = _on_device(smallest_entry)
_hardest_pair = _on_device(hardest_pair)
_hard_candidate = _on_device(hard_candidate)
_pair_triplets = _on_device(pair_triplets)
_passing_positives = _on_device(passing_positives)
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
def take_rows_kernel(src, rows, dst):
    """dst[i] = src[rows[i]]."""
    j0, i0 = cuda.grid(2)
    sj, si = cuda.gridsize(2)
    for i in range(i0, dst.shape[0], si):
        for j in range(j0, dst.shape[1], sj):
            dst[i, j] = src[rows[i], j]


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
    """(row_norms, symmetrize) for compute dtype `dtype`."""
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
    def symmetrize(P):
        """P <- P + P^T, in place (each thread owns the pair (i, j), i <= j)."""
        j0, i0 = cuda.grid(2)
        sj, si = cuda.gridsize(2)
        for i in range(i0, P.shape[0], si):
            for j in range(j0, P.shape[1], sj):
                if i < j:
                    s = P[i, j] + P[j, i]
                    P[i, j] = s
                    P[j, i] = s
                elif i == j:
                    P[i, i] = P[i, i] + P[i, i]

    return row_norms, symmetrize


GRAM, PRODUCT, TRANSPOSED_PRODUCT = 0, 1, 2  # what `matmul_kernel` computes


@functools.lru_cache(maxsize=None)
def matmul_kernel(dtype, tile, reg, mode):
    """A register-tiled product on blocks of tile x tile threads, each computing reg x reg outputs.

    kernel(A, Bm, rows, sq, metric, out):
    - GRAM: out[i, j] = distance(sum_k A[rows[i], k] A[j, k]): the block `rows` of the Gram matrix
      of A, turned into TFA's distances by `_metrics.distance` (Bm unused);
    - PRODUCT: out = A @ Bm; TRANSPOSED_PRODUCT: out = A.T @ Bm (rows, sq, metric unused).
    Every entry is summed over k in increasing order, so the Gram matrix is exactly symmetric.
    """
    nbtype = _nb(dtype)
    T, R = tile, reg
    BM = T * R  # rows and columns of `out` per block
    BM1 = BM + 1  # padded shared rows: no bank conflicts; a compile-time constant

    @cuda.jit
    def kernel(A, Bm, rows, sq, metric, out):
        sA = cuda.shared.array((T, BM1), nbtype)  # sA[k, m] = the left factor's (row0 + m, k0 + k)
        sB = cuda.shared.array((T, BM1), nbtype)
        acc = cuda.local.array((R, R), nbtype)
        a_reg = cuda.local.array(R, nbtype)
        b_reg = cuda.local.array(R, nbtype)
        zero = nbtype(0)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        M = out.shape[0]
        N = out.shape[1]
        K = A.shape[0] if mode == TRANSPOSED_PRODUCT else A.shape[1]
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
                        inside = i < M and k < K
                        if mode == GRAM:
                            sA[tx, m] = A[rows[i], k] if inside else zero
                            j = col0 + m
                            sB[tx, m] = A[j, k] if j < N and k < K else zero
                        else:
                            if mode == PRODUCT:
                                sA[tx, m] = A[i, k] if inside else zero
                            else:
                                sA[tx, m] = A[k, i] if inside else zero
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
                            if mode == GRAM:
                                out[i, j] = _distance(acc[r, c], sq, rows[i], j, metric)
                            else:
                                out[i, j] = acc[r, c]

    return kernel


@functools.lru_cache(maxsize=None)
def backward_kernels(dtype):
    """(sums, accumulate_rows, accumulate_all, finish_squared): the block-wise backward.

    With W the block's rows of dS/dP (rows[i] the anchor of row i), h gathers
    h_a += sum_j W_ij (s y_a - y_j) and h_j += sum_i W_ij (s y_j - y_a), s = 1 for squared
    distances, 0 for the cosine of "angular" (as `_cpu._dense_backward_rows` and
    `_cpu._dense_columns`)."""
    nbtype = _nb(dtype)

    @cuda.jit
    def sums(W, by_row, by_column):
        """by_row[i] = sum_j W[i, j], by_column[j] = sum_i W[i, j], in float64, in order."""
        for i in range(cuda.grid(1), W.shape[0], cuda.gridsize(1)):
            acc = 0.0
            for j in range(W.shape[1]):
                acc += numba.float64(W[i, j])
            by_row[i] = acc
        for j in range(cuda.grid(1), W.shape[1], cuda.gridsize(1)):
            acc = 0.0
            for i in range(W.shape[0]):
                acc += numba.float64(W[i, j])
            by_column[j] = acc

    @cuda.jit
    def accumulate_rows(h, rows, y, by_row, WY, self_weight):
        """h[rows[i]] += s by_row[i] y[rows[i]] - WY[i]: each row of the block owned by a thread."""
        for i in range(cuda.grid(1), rows.shape[0], cuda.gridsize(1)):
            a = rows[i]
            for d in range(h.shape[1]):
                h[a, d] += self_weight * nbtype(by_row[i]) * y[a, d] - WY[i, d]

    @cuda.jit
    def accumulate_all(h, y, by_column, WtY, self_weight):
        """h[j] += s by_column[j] y[j] - WtY[j] for every row j."""
        for j in range(cuda.grid(1), h.shape[0], cuda.gridsize(1)):
            for d in range(h.shape[1]):
                h[j, d] += self_weight * nbtype(by_column[j]) * y[j, d] - WtY[j, d]

    @cuda.jit
    def finish(h, scale, angular, normalized, sq, inv_norm, grad):
        """grad = scale * dS/dx from h: 2 h through the squared distances, and for "angular"
        through n = x r, r = rsqrt(max(|x|^2, eps)): -(h - (h . n) n) r."""
        eps = nbtype(L2_NORMALIZE_EPSILON)
        two = nbtype(2)
        for i in range(cuda.grid(1), grad.shape[0], cuda.gridsize(1)):
            if angular:
                radial = nbtype(0)
                if sq[i] >= eps:
                    for k in range(grad.shape[1]):
                        radial += h[i, k] * normalized[i, k]
                for k in range(grad.shape[1]):
                    grad[i, k] = -(h[i, k] - radial * normalized[i, k]) * inv_norm[i] * scale
            else:
                for k in range(grad.shape[1]):
                    grad[i, k] = two * h[i, k] * scale

    return sums, accumulate_rows, accumulate_all, finish


@functools.lru_cache(maxsize=None)
def semihard_kernel(dtype, threads, want_mine, want_grad):
    """The post's positive loop, one block of `threads` threads per anchor (grid-stride over
    anchors), each thread taking positives t, t + threads, ... of its anchor.

    kernel(D, rows, classes, margin, metric, totals, mined, chosen):
    - D: a block of rows of the distance matrix, row i that of the anchor rows[i];
      classes = (codes, members, start, position, pair_offset) of `_classes.Classes`, the pairs
      of the block's anchors starting at pair_offset[i];
    - totals[i] = (sum of the anchor's triplet losses, pairs, active, semihard) in float64, each
      added in a fixed order;
    - with want_mine, mined = (anchor, positive, negative, semihard, loss): one entry per pair;
    - with want_grad, chosen = (distance, ties) per pair: the chosen negative's distance and how
      many negatives tie at it (0 for a pair off the hinge); then row a of D is overwritten with
      dS/dP[a, :], S the sum of the losses, by the rule of the "cpu" backend.
    """
    nbtype = _nb(dtype)
    T = threads

    @cuda.jit
    def kernel(D, rows, classes, margin, metric, totals, mined, chosen):
        s_sum = cuda.shared.array(T, numba.float64)
        s_counts = cuda.shared.array((T, 3), numba.int64)  # active, semihard, on or past hinge
        s_smallest = cuda.shared.array(1, nbtype)  # without negatives: the row's minimum
        s_smallest_ties = cuda.shared.array(1, numba.int64)
        codes, members, start, position, pair_offset = classes
        above, below = nbtype(math.inf), nbtype(-math.inf)
        zero = nbtype(0)
        t = cuda.threadIdx.x
        B = D.shape[1]
        for i in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
            a = rows[i]
            distances = D[i]
            first = start[codes[a]]
            n_positives = start[codes[a] + 1] - first - 1
            q = position[a]  # a's place among the members of its class
            total = 0.0
            active = semihard_pairs = hinged = 0
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
                active += l > zero
                semihard_pairs += semihard
                pair = pair_offset[i] + k
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
                        hinged += 1
                        if n0 >= 0:
                            ties = _count_negatives_at(distances, codes, a, n0)
                        chosen[1][pair] = ties
            s_sum[t] = total
            s_counts[t, 0] = active
            s_counts[t, 1] = semihard_pairs
            s_counts[t, 2] = hinged
            cuda.syncthreads()
            if t == 0:  # the threads' sums in a fixed order
                for u in range(1, T):
                    total += s_sum[u]
                    active += s_counts[u, 0]
                    semihard_pairs += s_counts[u, 1]
                    hinged += s_counts[u, 2]
                totals[i, 0] = total
                totals[i, 1] = n_positives
                totals[i, 2] = active
                totals[i, 3] = semihard_pairs
                s_counts[0, 2] = hinged
                if n_positives + 1 == B:
                    smallest, ties = _smallest_entry(distances)
                    s_smallest[0] = distances[smallest]
                    s_smallest_ties[0] = ties
            cuda.syncthreads()

            # dS/dD for row a, one column per thread: +1 at each active positive, and each
            # active pair's -1 shared equally by the negatives tied at its chosen distance.
            if want_grad:
                n_hinged = s_counts[0, 2]
                for n in range(t, B, T):
                    g = zero
                    if codes[n] == codes[a] and n != a:
                        qn = position[n]
                        if chosen[1][pair_offset[i] + (qn if qn < q else qn - 1)] > 0:
                            g += nbtype(1)
                    if n_positives + 1 == B:
                        if distances[n] == s_smallest[0]:
                            g -= nbtype(n_hinged) / nbtype(s_smallest_ties[0])
                    elif codes[n] != codes[a]:
                        for k in range(n_positives):
                            pair = pair_offset[i] + k
                            ties = chosen[1][pair]
                            if ties > 0 and distances[n] == chosen[0][pair]:
                                g -= nbtype(1) / nbtype(ties)
                    D[i, n] = _pre_distance_gradient(g, distances[n], metric, D)
            cuda.syncthreads()

    return kernel


@functools.lru_cache(maxsize=None)
def hard_kernel(dtype, threads, soft, want_grad):
    """TFA's triplet_hard_loss, one block per anchor: thread 0 finds the hardest pair
    (`_loop.hardest_pair`), then with want_grad each thread overwrites its columns of the
    anchor's row with dS/dP. kernel(D, rows, classes, margin, metric, totals): as
    `semihard_kernel`'s; totals[i] = (the loss, 1, active, hardest positive < hardest
    negative)."""
    nbtype = _nb(dtype)
    T = threads

    @cuda.jit
    def kernel(D, rows, classes, margin, metric, totals):
        s_pair = cuda.shared.array(4, numba.int64)  # p0, p_ties, n0, n_ties
        s_slope = cuda.shared.array(1, numba.float64)
        codes, members, start, position, pair_offset = classes
        zero = nbtype(0)
        t = cuda.threadIdx.x
        B = D.shape[1]
        for i in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
            a = rows[i]
            distances = D[i]
            size = start[codes[a] + 1] - start[codes[a]]
            if t == 0:
                p0, p_ties, n0, n_ties = _hardest_pair(distances, codes, a)
                z = distances[p0] - distances[n0]
                if soft:  # log1p(exp(z)) without overflow, and its slope, the sigmoid
                    z64 = numba.float64(z)
                    loss = (z64 if z64 > 0 else 0.0) + math.log1p(math.exp(-abs(z64)))
                    slope = 0.5 * (1.0 + math.tanh(0.5 * z64))
                else:
                    hinge = z + margin
                    loss = numba.float64(hinge if hinge > zero else zero)
                    slope = 1.0 if hinge >= zero else 0.0  # on the hinge TF's maximum passes
                totals[i, 0] = loss
                totals[i, 1] = 1
                totals[i, 2] = loss > 0
                totals[i, 3] = z < zero
                s_pair[0] = p0
                s_pair[1] = p_ties
                s_pair[2] = n0
                s_pair[3] = n_ties
                s_slope[0] = slope
            cuda.syncthreads()
            if want_grad:  # tied candidates share the gradient
                hp = distances[s_pair[0]]
                hn = distances[s_pair[2]]
                slope = s_slope[0]
                cuda.syncthreads()  # every thread has read hp and hn before a column changes
                for n in range(t, B, T):
                    positive, negative = _hard_candidate(codes, a, n, size > 1, size < B)
                    g = 0.0
                    if positive and distances[n] == hp:
                        g += slope / s_pair[1]
                    if negative and distances[n] == hn:
                        g -= slope / s_pair[3]
                    D[i, n] = _pre_distance_gradient(nbtype(g), distances[n], metric, D)
            cuda.syncthreads()

    return kernel


@functools.lru_cache(maxsize=None)
def every_triplet_kernel(dtype, threads, rule, want_grad, want_values):
    """The rules "batch-all" and "all-semihard" (`_rules.CODES`), one block per anchor, each thread running
    the post's loop over the negatives (`_loop.pair_triplets`) for its share of the positives.
    kernel(D, rows, classes, margin, metric, totals, pairs): as `semihard_kernel`'s; totals[i] =
    (sum, counted, active, farther); pairs = (passing, values) per pair: how many of its triplets
    pass gradient (with want_grad) and the sum of their losses (with want_values). With want_grad
    the anchor's row of D is overwritten with dS/dP: the negatives' columns first (they read the
    positives' distances), then the positives'."""
    nbtype = _nb(dtype)
    T = threads
    epsilon = BATCH_ALL_EPSILON if rule == BATCH_ALL_CODE else 0.0

    @cuda.jit
    def kernel(D, rows, classes, margin, metric, totals, pairs):
        s_sum = cuda.shared.array(T, numba.float64)
        s_counts = cuda.shared.array((T, 3), numba.int64)  # counted, active, farther
        codes, members, start, position, pair_offset = classes
        passing, values = pairs
        eps = nbtype(epsilon)
        t = cuda.threadIdx.x
        B = D.shape[1]
        for i in range(cuda.blockIdx.x, rows.shape[0], cuda.gridDim.x):
            a = rows[i]
            distances = D[i]
            first = start[codes[a]]
            n_positives = start[codes[a] + 1] - first - 1
            q = position[a]  # a's place among the members of its class
            total = 0.0
            counted = active = farther = 0
            for k in range(t, n_positives, T):  # try this thread's positives for the anchor
                p = members[first + (k if k < q else k + 1)]  # positive cannot be the anchor
                triplets = _pair_triplets(distances, codes, a, p, margin, rule, eps, distances[:0])
                total += triplets[0]
                counted += triplets[1]
                active += triplets[2]
                farther += triplets[3]
                if want_grad:
                    passing[pair_offset[i] + k] = triplets[4]
                if want_values:
                    values[pair_offset[i] + k] = triplets[0]
            s_sum[t] = total
            s_counts[t, 0] = counted
            s_counts[t, 1] = active
            s_counts[t, 2] = farther
            cuda.syncthreads()
            if t == 0:  # the threads' sums in a fixed order
                for u in range(1, T):
                    total += s_sum[u]
                    counted += s_counts[u, 0]
                    active += s_counts[u, 1]
                    farther += s_counts[u, 2]
                totals[i, 0] = total
                totals[i, 1] = counted
                totals[i, 2] = active
                totals[i, 3] = farther
            cuda.syncthreads()
            if want_grad:  # +1 at p and -1 at n for every triplet (a, p, n) that passes
                positives = members[first : first + n_positives + 1]
                for n in range(t, B, T):
                    if codes[n] != codes[a]:
                        g = -_passing_positives(distances, positives, a, n, margin, rule, eps)
                        D[i, n] = _pre_distance_gradient(nbtype(g), distances[n], metric, D)
                cuda.syncthreads()
                for n in range(t, B, T):
                    if codes[n] == codes[a]:
                        qn = position[n]
                        g = passing[pair_offset[i] + (qn if qn < q else qn - 1)] if n != a else 0
                        D[i, n] = _pre_distance_gradient(nbtype(g), distances[n], metric, D)
            cuda.syncthreads()

    return kernel


@functools.lru_cache(maxsize=None)
def totals_kernel(threads):
    """out[c] = sum over anchors of totals[a, c], in float64 in a fixed order; one block."""
    T = threads

    @cuda.jit
    def kernel(totals, out):
        s = cuda.shared.array((T, 4), numba.float64)
        t = cuda.threadIdx.x
        for c in range(4):
            s[t, c] = 0.0
        for i in range(t, totals.shape[0], T):
            for c in range(4):
                s[t, c] += totals[i, c]
        cuda.syncthreads()
        if t == 0:
            for c in range(4):
                acc = 0.0
                for u in range(T):
                    acc += s[u, c]
                out[c] = acc

    return kernel

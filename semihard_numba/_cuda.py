"""Backend "cuda": the loss, the mining and the gradient as numba.cuda kernels.

Every `numba.cuda` import of the package lives in this module, which is imported only when a call
needs CUDA (backend "cuda", device-array input, or a large batch with backend "auto"). Importing it
does not create a CUDA context: that happens on the first allocation or kernel launch.

The pipeline, all on the device:

1. Input. Embeddings exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba
   device arrays) are used in place when they are C-contiguous float32 / float64; other dtypes
   (float16 -> float32, integers -> float64) and strided views are converted by a copy kernel on
   the device. NumPy input is copied to the device once. Labels are always brought to the host
   (B values) to build the class tables, so labels on either side work.
2. The (B, B) distance matrix: a shared-memory tiled Gram kernel whose epilogue applies TFA's
   formulas in the embeddings' precision (the same as `_distances.pairwise_distances`).
3. Mining: one block per anchor. The block finds the anchor's farthest negative together (each
   thread scans a strided slice of the row, thread 0 combines the slices in order); then each thread
   takes positives t, t + T, ... and runs the post's loop over the negatives for each. The anchor's
   losses are added in float64 in a fixed order (per thread, then thread 0 over the threads), and a
   single-block kernel adds the anchors in a fixed order: no atomics, so repeated runs give
   bit-identical results.
4. Gradient: the mining kernel stores each pair's negative distance and tie count, then the block
   walks the anchor's row once more and overwrites the distance row with dL/dP (P the squared
   distance, or the cosine for "angular"); a symmetrize kernel (S = dL/dP + dL/dP^T), a tiled
   S @ x product and a small row kernel finish the chain rule, the same algebra as
   `_distances.symmetric_pre_distance_backward`.

Tunables (`TILE`, `REG`, `THREADS`, `MAX_BLOCKS`) are read by the host code at each call and handed
to the kernel factories and launches; kernels never read module globals that may change. The test
suite sets them small so that the CUDA simulator covers several blocks and blocks smaller than the
batch.

Checking for NaN / inf on device input runs a per-row kernel on the device and copies B flags back.
"""

import functools
import math

import numba
import numpy as np
from numba import cuda

from ._cpu import ANGULAR, L2, METRIC_CODES, PRECOMPUTED, SQUARED_L2
from ._dispatch import INSTALL_HINT, is_device_array
from ._distances import L2_NORMALIZE_EPSILON
from ._inputs import (
    Batch,
    check_distance_matrix,
    check_embedding_shape,
    check_margin,
    check_metric,
    compute_dtype,
    label_codes,
    nonfinite_rows_error,
    output_dtype,
)
from ._mining import MiningResult

# Launch configuration, read by host code at each call.
TILE = 16  # Gram / matmul kernels: blocks of TILE x TILE threads, k-chunks of TILE
REG = 4  # ... each thread computes REG x REG outputs: TILE * REG = 64 rows/columns per block
THREADS = 128  # threads per block of the mining, reduction and elementwise kernels
MAX_BLOCKS = 65535  # grid size cap; the kernels use grid-stride loops beyond it


# --------------------------------------------------------------------------------------------
# Environment


def simulator_enabled():
    return bool(getattr(numba.config, "ENABLE_CUDASIM", False))


def _implementation():
    try:
        from importlib.metadata import version

        return f"numba-cuda {version('numba-cuda')}"
    except Exception:  # the CUDA target bundled with numba itself
        return f"numba {numba.__version__}'s built-in numba.cuda"


def status():
    """(usable, reason) for the "cuda" backend on this machine. Creates no CUDA context."""
    if simulator_enabled():
        return True, (
            "Numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1): kernels run as Python threads, "
            "correct but slow; for testing only"
        )
    try:
        available = cuda.is_available()
    except Exception as error:  # a broken driver or library install
        return (
            False,
            f"numba.cuda failed to start ({type(error).__name__}: {error}); {INSTALL_HINT}",
        )
    if available:
        return True, f"CUDA GPU found by {_implementation()}"
    detail = None
    try:
        from numba.cuda.cudadrv.driver import driver

        detail = getattr(driver, "initialization_error", None)
    except Exception:
        pass
    detail = " ".join(str(detail).split()) if detail else "no CUDA driver or no GPU"
    return False, (
        f"no usable CUDA GPU ({detail}). The cuda backend needs an NVIDIA GPU with its driver and "
        f"the CUDA libraries: {INSTALL_HINT}"
    )


def as_device(obj):
    """A Numba device array viewing `obj`'s memory (no copy)."""
    if type(obj).__module__.startswith("numba.cuda.simulator"):
        return obj
    if not hasattr(cuda, "as_cuda_array"):  # the simulator only knows its own arrays
        raise TypeError(
            f"the CUDA simulator cannot use {type(obj).__name__} device arrays; pass "
            "numba.cuda.to_device arrays"
        )
    try:
        return cuda.as_cuda_array(obj)
    except Exception as error:
        raise TypeError(
            f"cannot use {type(obj).__name__} through __cuda_array_interface__ ({error}); "
            "PyTorch tensors that require grad must be detached first (tensor.detach())"
        ) from error


def to_host(obj):
    """A NumPy copy of a device array (used for labels, and by the host backends)."""
    return as_device(obj).copy_to_host()


# --------------------------------------------------------------------------------------------
# Kernels


def _nb(dtype):
    return numba.from_dtype(np.dtype(dtype))


@cuda.jit(device=True)
def _derivative(d, metric, zero, half, one):
    """dD/dP for one entry (`_cpu._distance_derivative`); 0 passes no gradient."""
    if d <= zero:
        return zero
    if metric == L2:
        return half / d
    if metric == SQUARED_L2:
        return one
    return -one


@cuda.jit(device=True)
def _gram_to_distance(g, sq, i, j, metric, zero, one):
    """Entry (i, j) of TFA's distance matrix from the Gram entry g = x_i . x_j (`_cpu._to_distance_row`)."""
    if metric == ANGULAR:  # g is n_i . n_j of the normalised rows; the diagonal is not forced to 0
        d = one - g
        return d if d > zero else zero
    d2 = (sq[i] + sq[j]) - (g + g)
    if d2 <= zero or i == j:
        return zero
    if metric == L2:
        return math.sqrt(d2)
    return d2


@cuda.jit
def _copy_kernel(src, dst):
    """dst[i, j] = src[i, j], converting the dtype (any strides)."""
    j0, i0 = cuda.grid(2)
    sj, si = cuda.gridsize(2)
    for i in range(i0, dst.shape[0], si):
        for j in range(j0, dst.shape[1], sj):
            dst[i, j] = src[i, j]


@cuda.jit
def _nonfinite_rows_kernel(x, bad):
    """bad[i] = 1 where row i holds NaN or inf."""
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        flag = 0
        for k in range(x.shape[1]):
            if not math.isfinite(x[i, k]):
                flag = 1
        bad[i] = flag


@functools.lru_cache(maxsize=None)
def _elementwise_kernels(dtype):
    """Row and elementwise kernels for compute dtype `dtype` (constants typed in it)."""
    nbtype = _nb(dtype)

    @cuda.jit
    def row_norms(x, metric, sq, normalized, inv_norm):
        """sq[i] = |x_i|^2; for "angular" also n_i = x_i * rsqrt(max(|x_i|^2, eps)) (`l2_normalize`)."""
        one = nbtype(1)
        eps = nbtype(L2_NORMALIZE_EPSILON)
        for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
            s = nbtype(0)
            for k in range(x.shape[1]):
                s += x[i, k] * x[i, k]
            sq[i] = s
            if metric == ANGULAR:
                r = one / nbtype(math.sqrt(max(s, eps)))
                inv_norm[i] = r
                for k in range(x.shape[1]):
                    normalized[i, k] = x[i, k] * r

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
def _matmul_kernel(dtype, tile, reg, gram):
    """A register-tiled product on blocks of tile x tile threads, each computing reg x reg outputs.

    gram=True: out[i, j] = distance(sum_k A[i, k] A[j, k]) (Bm is A: the Gram matrix x x^T, turned
    into TFA's distances by the epilogue). gram=False: out = A @ Bm.
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
        one = nbtype(1)
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
                                out[i, j] = _gram_to_distance(
                                    acc[r, c], sq, i, j, metric, zero, one
                                )
                            else:
                                out[i, j] = acc[r, c]

    return kernel


@functools.lru_cache(maxsize=None)
def _mining_kernel(dtype, threads, want_mine, want_grad):
    """The post's loop, one block of `threads` threads per anchor (grid-stride over anchors).

    Writes anchor_loss[a] (float64, the sum of a's triplet losses); with want_mine the per-pair
    outputs at offset[a] + k; with want_grad overwrites row a of D with dL/dP[a, :] up to the
    factor 1 / (number of pairs), with the same rule as `_cpu._anchor_losses`.
    """
    nbtype = _nb(dtype)
    T = threads

    @cuda.jit
    def kernel(
        D,
        codes,
        members,
        class_start,
        position,
        offset,
        margin,
        metric,
        anchor_loss,
        out_anchor,
        out_positive,
        out_negative,
        out_semihard,
        out_loss,
        pair_distance,
        pair_ties,
    ):
        s_val = cuda.shared.array(T, nbtype)
        s_idx = cuda.shared.array(T, numba.int64)
        s_cnt = cuda.shared.array(T, numba.int64)
        s_sum = cuda.shared.array(T, numba.float64)
        s_ref_val = cuda.shared.array(1, nbtype)
        s_ref = cuda.shared.array(2, numba.int64)
        zero = nbtype(0)
        half = nbtype(0.5)
        one = nbtype(1)
        t = cuda.threadIdx.x
        B = D.shape[0]
        for a in range(cuda.blockIdx.x, B, cuda.gridDim.x):
            ca = codes[a]
            first = class_start[ca]
            n_pairs = class_start[ca + 1] - first - 1
            no_negative = n_pairs + 1 == B
            q = position[a]  # a's place among the members of its class

            # 1. The fallback negative: a's farthest negative (first index on ties, and how many tie);
            #    with no negative at all, the smallest entry of a's row (TFA's empty masked maximum).
            ref_i = -1
            ref_v = zero
            ref_c = 0
            for n in range(t, B, T):
                if no_negative or codes[n] != ca:
                    v = D[a, n]
                    if ref_i == -1 or (v < ref_v if no_negative else v > ref_v):
                        ref_i = n
                        ref_v = v
                        ref_c = 1
                    elif v == ref_v:
                        ref_c += 1
            s_val[t] = ref_v
            s_idx[t] = ref_i
            s_cnt[t] = ref_c
            cuda.syncthreads()
            if t == 0:  # combine the threads' slices in a fixed order
                for u in range(1, T):
                    ui = s_idx[u]
                    if ui != -1:
                        uv = s_val[u]
                        if ref_i == -1 or (uv < ref_v if no_negative else uv > ref_v):
                            ref_i = ui
                            ref_v = uv
                            ref_c = s_cnt[u]
                        elif uv == ref_v:
                            ref_c += s_cnt[u]
                            if ui < ref_i:
                                ref_i = ui
                s_ref_val[0] = ref_v
                s_ref[0] = ref_i
                s_ref[1] = ref_c
            cuda.syncthreads()
            far_v = s_ref_val[0]
            far_n = s_ref[0] if not no_negative else -1
            far_c = s_ref[1]

            # 2. Each thread takes positives k = t, t + T, ... (members of a's class in index order,
            #    a skipped) and scans the negatives for the closest one strictly farther than p.
            total = 0.0
            active = 0
            for k in range(t, n_pairs, T):
                p = members[first + (k if k < q else k + 1)]
                dp = D[a, p]
                nb = -1
                db = dp
                cb = 0
                if not no_negative:
                    for n in range(B):
                        if codes[n] != ca:
                            dn = D[a, n]
                            if dn > dp:  # semi-hard: strictly farther (TFA ignores the margin here)
                                if nb == -1 or dn < db:
                                    nb = n
                                    db = dn
                                    cb = 1
                                elif dn == db:
                                    cb += 1
                if nb != -1:
                    dan = db
                    neg = nb
                    ties = cb
                else:
                    dan = far_v
                    neg = far_n
                    ties = far_c
                l = margin + (dp - dan)
                lv = l if l > zero else zero
                total += numba.float64(lv)
                pair = offset[a] + k
                if want_mine:
                    out_anchor[pair] = a
                    out_positive[pair] = p
                    out_negative[pair] = neg
                    out_semihard[pair] = nb != -1
                    out_loss[pair] = lv
                if want_grad:
                    pair_distance[pair] = dan
                    if l >= zero:  # on the hinge TF's maximum still passes gradient
                        pair_ties[pair] = ties
                        active += 1
                    else:
                        pair_ties[pair] = 0
            s_sum[t] = total
            s_cnt[t] = active
            cuda.syncthreads()
            if t == 0:
                for u in range(1, T):
                    total += s_sum[u]
                    active += s_cnt[u]
                anchor_loss[a] = total
                s_ref[0] = active
            cuda.syncthreads()

            # 3. dL/dP for row a, one column per thread: +dD/dP at each active positive, and each
            #    active pair's -dD/dP shared equally by the negatives tied at its chosen distance.
            if want_grad:
                n_active = s_ref[0]
                for n in range(t, B, T):
                    dn = D[a, n]
                    g = zero
                    if codes[n] == ca and n != a:
                        qn = position[n]
                        if pair_ties[offset[a] + (qn if qn < q else qn - 1)] > 0:
                            g += _derivative(dn, metric, zero, half, one)
                    if no_negative:
                        if dn == far_v and n_active > 0:
                            g -= (
                                _derivative(far_v, metric, zero, half, one)
                                / nbtype(far_c)
                                * nbtype(n_active)
                            )
                    elif codes[n] != ca:
                        for k in range(n_pairs):
                            pair = offset[a] + k
                            c = pair_ties[pair]
                            if c > 0 and dn == pair_distance[pair]:
                                g -= _derivative(dn, metric, zero, half, one) / nbtype(c)
                    D[a, n] = g
            cuda.syncthreads()

    return kernel


@functools.lru_cache(maxsize=None)
def _sum_kernel(threads):
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
def _rowsum_kernel(dtype, threads):
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


# --------------------------------------------------------------------------------------------
# Host drivers


def _grid_1d(n):
    return max(1, min(-(-n // THREADS), MAX_BLOCKS)), THREADS


def _grid_2d(rows, cols):
    bx = min(32, THREADS)
    by = max(1, THREADS // bx)
    grid = (max(1, min(-(-cols // bx), MAX_BLOCKS)), max(1, min(-(-rows // by), MAX_BLOCKS)))
    return grid, (bx, by)


def _copy(src, dtype):
    """A C-contiguous device copy of device array `src` in `dtype`."""
    dst = cuda.device_array(src.shape, dtype=dtype)
    grid, block = _grid_2d(*src.shape)
    _copy_kernel[grid, block](src, dst)
    return dst


def _check_finite_device(x):
    bad = cuda.device_array(x.shape[0], dtype=np.uint8)
    grid, block = _grid_1d(x.shape[0])
    _nonfinite_rows_kernel[grid, block](x, bad)
    return np.flatnonzero(bad.copy_to_host())


def host_labels(labels):
    """Labels as a host array: device labels (B values) are copied to the host."""
    return to_host(labels) if is_device_array(labels) else labels


def device_batch(labels, embeddings, margin, distance_metric, check_finite=True):
    """Validate device-array embeddings; the Batch holds a C-contiguous device array in the compute
    dtype: the caller's own memory when it already is one, else a converted device copy."""
    codes = label_codes(host_labels(labels))
    raw = as_device(embeddings)
    dtype = compute_dtype(raw.dtype)
    check_embedding_shape(raw.shape, codes.shape[0])
    if raw.dtype == dtype and raw.is_c_contiguous():
        x = raw
    else:
        x = _copy(raw, dtype)
    if check_finite and dtype.kind == "f":
        rows = _check_finite_device(x)
        if rows.size:
            raise nonfinite_rows_error(rows)
    return Batch(
        codes, x, output_dtype(raw.dtype), check_margin(margin), check_metric(distance_metric)
    )


def _on_host(batch):
    return isinstance(batch.x, np.ndarray)


def _device_x(batch):
    return cuda.to_device(batch.x) if _on_host(batch) else batch.x


def _callable_distances(metric, x):
    """Run a callable metric on the device array x; validate and copy what it returns."""
    D = metric(x)
    B = x.shape[0]
    if isinstance(D, np.ndarray):  # tolerated: validated on the host, then copied to the device
        return cuda.to_device(check_distance_matrix(D, B, np.dtype(x.dtype)))
    if is_device_array(D):
        D = as_device(D)
    else:
        raise TypeError(
            "on the cuda backend the distance_metric callable must return a (B, B) device array "
            f"(CuPy, PyTorch CUDA tensor or Numba device array), got {type(D).__name__}"
        )
    if tuple(D.shape) != (B, B):
        raise ValueError(
            f"the distance_metric callable must return a ({B}, {B}) matrix, got shape {tuple(D.shape)}"
        )
    if np.dtype(D.dtype).kind not in "iuf":
        raise TypeError(f"the distance_metric callable returned dtype {D.dtype}, expected floats")
    D = _copy(D, x.dtype)  # a private copy in the compute dtype
    if _check_finite_device(D).size:
        raise ValueError("the distance_metric callable returned NaN or infinite distances")
    return D


def _distances(batch, x):
    """(D, metric code, sq, normalized, inv_norm): TFA's distance matrix on the device."""
    B = x.shape[0]
    dtype = np.dtype(x.dtype)
    if callable(batch.metric):
        return _callable_distances(batch.metric, x), PRECOMPUTED, None, None, None
    metric = METRIC_CODES[batch.metric]
    sq = cuda.device_array(B, dtype=dtype)
    if metric == ANGULAR:
        normalized = cuda.device_array(x.shape, dtype=dtype)
        inv_norm = cuda.device_array(B, dtype=dtype)
    else:  # unused placeholders of the same dimensions, so row_norms compiles once per dtype
        normalized = cuda.device_array((1, 1), dtype=dtype)
        inv_norm = cuda.device_array(1, dtype=dtype)
    row_norms = _elementwise_kernels(dtype.str)[0]
    grid, block = _grid_1d(B)
    row_norms[grid, block](x, metric, sq, normalized, inv_norm)
    D = cuda.device_array((B, B), dtype=dtype)
    source = normalized if metric == ANGULAR else x
    _matmul(source, source, sq, metric, D, gram=True)
    if metric != ANGULAR:
        normalized = inv_norm = None
    return D, metric, sq, normalized, inv_norm


def _matmul(A, Bm, sq, metric, out, gram):
    bm = TILE * REG
    kernel = _matmul_kernel(np.dtype(out.dtype).str, TILE, REG, gram)
    rows, cols = out.shape
    grid = (max(1, min(-(-cols // bm), MAX_BLOCKS)), max(1, min(-(-rows // bm), MAX_BLOCKS)))
    kernel[grid, (TILE, TILE)](A, Bm, sq, metric, out)


class _Pairs:
    """Class tables on the host and the device: members of each class in index order, each
    sample's place in its class, and each anchor's first pair (pairs ordered by anchor, positive)."""

    def __init__(self, codes):
        B = codes.shape[0]
        counts = np.bincount(codes)
        members = np.argsort(codes, kind="stable").astype(np.int64)
        class_start = np.zeros(counts.size + 1, dtype=np.int64)
        np.cumsum(counts, out=class_start[1:])
        position = np.empty(B, dtype=np.int64)
        position[members] = np.arange(B) - class_start[codes[members]]
        offset = np.zeros(B + 1, dtype=np.int64)
        np.cumsum(counts[codes] - 1, out=offset[1:])
        self.count = int(offset[-1])
        self.device = [
            cuda.to_device(a)
            for a in (codes.astype(np.int64), members, class_start, position, offset)
        ]


def _run_mining(batch, D, metric, pairs, want_mine, want_grad):
    """Launch the mining kernel; returns (anchor_loss, MiningResult of device arrays or None)."""
    B = D.shape[0]
    dtype = np.dtype(D.dtype)
    anchor_loss = cuda.device_array(B, dtype=np.float64)
    n = pairs.count if want_mine else 1
    result = MiningResult(
        anchor=cuda.device_array(n, dtype=np.int64),
        positive=cuda.device_array(n, dtype=np.int64),
        negative=cuda.device_array(n, dtype=np.int64),
        semihard=cuda.device_array(n, dtype=np.bool_),
        loss=cuda.device_array(n, dtype=dtype),
    )
    m = pairs.count if want_grad else 1
    pair_distance = cuda.device_array(m, dtype=dtype)
    pair_ties = cuda.device_array(m, dtype=np.int64)
    kernel = _mining_kernel(dtype.str, THREADS, want_mine, want_grad)
    grid = max(1, min(B, MAX_BLOCKS))
    kernel[grid, THREADS](
        D,
        *pairs.device,
        dtype.type(batch.margin),
        metric,
        anchor_loss,
        result.anchor,
        result.positive,
        result.negative,
        result.semihard,
        result.loss,
        pair_distance,
        pair_ties,
    )
    return anchor_loss, (result if want_mine else None)


def _total(anchor_loss):
    out = cuda.device_array(1, dtype=np.float64)
    _sum_kernel(THREADS)[1, THREADS](anchor_loss, out)
    return float(out.copy_to_host()[0])


def loss(batch):
    x = _device_x(batch)
    D, metric, *_ = _distances(batch, x)
    pairs = _Pairs(batch.codes)
    if pairs.count == 0:
        return 0.0  # TFA: 0 / 0 = NaN with no positive pair
    anchor_loss, _ = _run_mining(batch, D, metric, pairs, False, False)
    return _total(anchor_loss) / pairs.count


def mine(batch):
    """MiningResult of device arrays for device input, of NumPy arrays for host input."""
    x = _device_x(batch)
    D, metric, *_ = _distances(batch, x)
    pairs = _Pairs(batch.codes)
    dtype = np.dtype(D.dtype)
    if pairs.count == 0:
        empty = MiningResult.from_rows([], dtype)
        if _on_host(batch):
            return empty
        return MiningResult(
            **{
                f: cuda.to_device(getattr(empty, f))
                for f in ("anchor", "positive", "negative", "semihard", "loss")
            }
        )
    _, result = _run_mining(batch, D, metric, pairs, True, False)
    if _on_host(batch):
        return MiningResult(
            **{
                f: getattr(result, f).copy_to_host()
                for f in ("anchor", "positive", "negative", "semihard", "loss")
            }
        )
    return result


def loss_and_grad(batch):
    """(loss, grad): grad is a NumPy array in the compute dtype for host input (the API casts it),
    a device array in the output dtype for device input."""
    x = _device_x(batch)
    dtype = np.dtype(x.dtype)
    D, metric, sq, normalized, inv_norm = _distances(batch, x)
    pairs = _Pairs(batch.codes)
    if pairs.count == 0:
        zeros = np.zeros(x.shape, dtype=dtype if _on_host(batch) else batch.out_dtype)
        return 0.0, (zeros if _on_host(batch) else cuda.to_device(zeros))
    anchor_loss, _ = _run_mining(batch, D, metric, pairs, False, True)
    total = _total(anchor_loss) / pairs.count
    _, symmetrize, finish_squared, finish_angular = _elementwise_kernels(dtype.str)
    B = x.shape[0]
    grid, block = _grid_2d(B, B)
    symmetrize[grid, block](D, dtype.type(pairs.count))  # D now holds S = dL/dP + dL/dP^T
    source = normalized if metric == ANGULAR else x
    SY = cuda.device_array(x.shape, dtype=dtype)
    _matmul(D, source, sq, metric, SY, gram=False)
    grad = cuda.device_array(x.shape, dtype=dtype)
    if metric == ANGULAR:
        grid, block = _grid_1d(B)
        finish_angular[grid, block](normalized, sq, inv_norm, SY, grad)
    else:
        rowsum = cuda.device_array(B, dtype=dtype)
        _rowsum_kernel(dtype.str, THREADS)[max(1, min(B, MAX_BLOCKS)), THREADS](D, rowsum)
        grid, block = _grid_2d(*x.shape)
        finish_squared[grid, block](x, rowsum, SY, grad)
    if _on_host(batch):
        return total, grad.copy_to_host()
    if np.dtype(batch.out_dtype) != dtype:
        grad = _copy(grad, batch.out_dtype)
    return total, grad

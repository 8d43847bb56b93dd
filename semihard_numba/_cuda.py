"""Backend "cuda": the host side (the kernels are in `_cuda_kernels.py`).

Every `numba.cuda` import of the package lives in this module and `_cuda_kernels.py`, which are
imported only when a call needs CUDA (backend "cuda", device-array input, or a large batch with
backend "auto"). Importing them does not create a CUDA context: the first allocation does.

The pipeline, all on the device:

1. Input. Embeddings exposing ``__cuda_array_interface__`` (CuPy, PyTorch CUDA tensors, Numba
   device arrays) are used in place when they are C-contiguous float32 / float64; other dtypes
   (float16 -> float32, integers -> float64) and strided views are converted by a copy kernel on
   the device. NumPy input is copied to the device once. Labels are always brought to the host
   (B values) to build the class tables, so labels on either side work.
2. The (B, B) distance matrix: a shared-memory tiled Gram kernel whose epilogue applies TFA's
   formula (`_metrics.distance`, the "cpu" backend's) in the embeddings' precision.
3. Mining: one block per anchor, each thread running the post's loop (`_loop.choose_negative`)
   for its share of the anchor's positives. The anchor's losses are added in float64 in a fixed
   order (per thread, then thread 0 over the threads), and a single-block kernel adds the anchors
   in a fixed order: no atomics, so repeated runs give bit-identical results.
4. Gradient: the mining kernel overwrites each distance row with dL/dP (P the squared distance, or
   the cosine for "angular"); a symmetrize kernel (S = dL/dP + dL/dP^T), a tiled S @ x product and
   a small row kernel finish the chain rule, the algebra of
   `_distances.symmetric_pre_distance_backward`.

Launch sizes (`TILE`, `REG`, `THREADS`, `MAX_BLOCKS`) are read at each call and handed to the kernel
factories and launches. The test suite sets them small so that the CUDA simulator covers several
blocks and blocks smaller than the batch.

Checking for NaN / inf on device input runs a per-row kernel on the device and copies B flags back;
the squared norms ("L2" metrics' overflow check) come back the same way.
"""

import numba
import numpy as np
from numba import cuda

from . import _cuda_kernels as kernels
from ._classes import class_tables
from ._device import INSTALL_HINT, is_device_array, simulator_enabled
from ._distances import block_rows, check_squared_norms
from ._inputs import (
    NONFINITE_DISTANCES,
    Batch,
    check_anchors,
    check_distance_matrix,
    check_distance_matrix_type,
    check_embedding_shape,
    check_margin,
    check_metric,
    compute_dtype,
    label_codes,
    nonfinite_rows_error,
    output_dtype,
)
from ._metrics import ANGULAR, PRECOMPUTED, code
from ._mining import MiningResult
from ._rules import HARD, SEMIHARD, Rule, TripletStats

TILE = 16  # Gram / matmul kernels: blocks of TILE x TILE threads, k-chunks of TILE
REG = 4  # ... each thread computes REG x REG outputs: TILE * REG = 64 rows/columns per block
THREADS = 128  # threads per block of the mining, reduction and elementwise kernels
MAX_BLOCKS = 65535  # grid size cap; the kernels use grid-stride loops beyond it


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
    kernels.copy_kernel[grid, block](src, dst)
    return dst


def _nonfinite_rows(x):
    bad = cuda.device_array(x.shape[0], dtype=np.uint8)
    grid, block = _grid_1d(x.shape[0])
    kernels.nonfinite_rows_kernel[grid, block](x, bad)
    return np.flatnonzero(bad.copy_to_host())


def device_batch(labels, embeddings, margin, distance_metric, check_finite=True, anchors=None):
    """Validate device-array embeddings; the Batch holds a C-contiguous device array in the compute
    dtype: the caller's own memory when it already is one, else a converted device copy."""
    codes = label_codes(to_host(labels) if is_device_array(labels) else labels)
    raw = as_device(embeddings)
    dtype = compute_dtype(raw.dtype)
    check_embedding_shape(raw.shape, codes.shape[0])
    if raw.dtype == dtype and raw.is_c_contiguous():
        x = raw
    else:
        x = _copy(raw, dtype)
    if check_finite and dtype.kind == "f":
        rows = _nonfinite_rows(x)
        if rows.size:
            raise nonfinite_rows_error(rows)
    return Batch(
        codes,
        x,
        output_dtype(raw.dtype),
        check_margin(margin),
        check_metric(distance_metric),
        check_anchors(anchors, x.shape[0]),
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
    if not is_device_array(D):
        raise TypeError(
            "on the cuda backend the distance_metric callable must return a (B, B) device array "
            f"(CuPy, PyTorch CUDA tensor or Numba device array), got {type(D).__name__}"
        )
    D = as_device(D)
    check_distance_matrix_type(D.shape, D.dtype, B)
    D = _copy(D, x.dtype)  # a private copy in the compute dtype
    if _nonfinite_rows(D).size:
        raise ValueError(NONFINITE_DISTANCES)
    return D


class _Embeddings:
    """What every block needs of the embeddings, on the device: the squared norms sq, the rows y
    the Gram matrix is made of (x, or its normalised rows and their inverse norms for "angular"),
    or a callable metric's matrix."""

    def __init__(self, batch, x):
        B = x.shape[0]
        dtype = np.dtype(x.dtype)
        self.metric = code(batch.metric)
        self.sq = cuda.device_array(B, dtype=dtype)
        angular = self.metric == ANGULAR
        # unused placeholders of the same dimensions otherwise, so row_norms compiles once
        self.normalized = cuda.device_array(x.shape if angular else (1, 1), dtype=dtype)
        self.inv_norm = cuda.device_array(B if angular else 1, dtype=dtype)
        self.matrix = None
        if self.metric == PRECOMPUTED:
            self.matrix = _callable_distances(batch.metric, x)
            return
        row_norms = kernels.elementwise_kernels(dtype.str)[0]
        grid, block = _grid_1d(B)
        row_norms[grid, block](x, self.metric, self.sq, self.normalized, self.inv_norm)
        if not angular:
            check_squared_norms(self.sq.copy_to_host())
        self.y = self.normalized if angular else x

    def rows(self, block):
        """The block's rows of TFA's distance matrix (block: device indices of its anchors)."""
        source = self.matrix if self.matrix is not None else self.y
        D = cuda.device_array((block.shape[0], source.shape[0]), dtype=source.dtype)
        if self.matrix is not None:
            return _take_rows(self.matrix, block, D)
        _matmul(kernels.GRAM, self.y, self.y, block, self.sq, self.metric, D)
        return D


def _take_rows(src, rows, out):
    grid, block = _grid_2d(*out.shape)
    kernels.take_rows_kernel[grid, block](src, rows, out)
    return out


def _matmul(mode, A, Bm, rows, sq, metric, out):
    bm = TILE * REG
    kernel = kernels.matmul_kernel(np.dtype(out.dtype).str, TILE, REG, mode)
    n_rows, n_columns = out.shape
    grid = (
        max(1, min(-(-n_columns // bm), MAX_BLOCKS)),
        max(1, min(-(-n_rows // bm), MAX_BLOCKS)),
    )
    kernel[grid, (TILE, TILE)](A, Bm, rows, sq, metric, out)


def _device_classes(batch, classes):
    return tuple(
        cuda.to_device(a)
        for a in (
            batch.codes,
            classes.members,
            classes.start,
            classes.position,
            classes.pair_offset,
        )
    )


def _mined_pairs(n, dtype):
    """(anchor, positive, negative, semihard, loss) device arrays of n pairs (1 when unused)."""
    n = max(n, 1)
    int64 = (cuda.device_array(n, dtype=np.int64) for _ in range(3))
    return (*int64, cuda.device_array(n, dtype=np.bool_), cuda.device_array(n, dtype=dtype))


class _Outputs:
    """Where the kernels write, for all the anchors: per anchor totals (A, 4), the pairs' values
    (reduction "none"), the mined pairs, and h for the gradient."""

    def __init__(self, rule, classes, y_shape, dtype, want_grad, reduction, want_mine):
        n_anchors = classes.pair_offset.shape[0] - 1
        self.totals = cuda.device_array((max(n_anchors, 1), 4), dtype=np.float64)
        pairs = max(classes.n_pairs, 1)
        self.want_values = reduction == "none" and rule.name not in (SEMIHARD, HARD)
        self.values = cuda.device_array(pairs if self.want_values else 1, dtype=dtype)
        self.want_mine = want_mine or (reduction == "none" and rule.name == SEMIHARD)
        self.mined = _mined_pairs(classes.n_pairs if self.want_mine else 1, dtype)
        self.passing = cuda.device_array(pairs if want_grad else 1, dtype=np.int64)
        self.chosen = (cuda.device_array(pairs if want_grad else 1, dtype=dtype), self.passing)
        self.h = cuda.to_device(np.zeros(y_shape, dtype=dtype)) if want_grad else None


def _run(batch, rule, embeddings, classes, want_grad, outputs):
    """Every block of anchors through the rule's kernel (and its share of the gradient)."""
    anchors, B = batch.anchors, batch.size
    dtype = np.dtype(embeddings.sq.dtype)
    rows = block_rows(B, dtype.itemsize)
    codes, members, start, position, pair_offset = _device_classes(batch, classes)
    whole = anchors.shape[0] == B and rows >= B  # every anchor, in one block: W is square
    for first in range(0, anchors.shape[0], rows):
        last = min(first + rows, anchors.shape[0])
        block = cuda.to_device(anchors[first:last])
        D = embeddings.rows(block)
        block_classes = (codes, members, start, position, pair_offset[first : last + 1])
        args = (D, block, block_classes, dtype.type(batch.margin), embeddings.metric)
        totals = outputs.totals[first:last]
        launch = (max(1, min(last - first, MAX_BLOCKS)), THREADS)
        if rule.name == SEMIHARD:
            kernel = kernels.semihard_kernel(dtype.str, THREADS, outputs.want_mine, want_grad)
            kernel[launch](*args, totals, outputs.mined, outputs.chosen)
        elif rule.name == HARD:
            kernels.hard_kernel(dtype.str, THREADS, rule.soft, want_grad)[launch](*args, totals)
        else:
            kernel = kernels.every_triplet_kernel(
                dtype.str, THREADS, rule.code, want_grad, outputs.want_values
            )
            kernel[launch](*args, totals, (outputs.passing, outputs.values))
        if want_grad:  # D holds the block's rows of dS/dP
            _accumulate_backward(outputs.h, D, embeddings, block, whole)


def _accumulate_backward(h, W, embeddings, block, whole):
    """h += the gradient's share of the block's rows W of dS/dP (as `_cpu._dense_backward_rows`
    and `_cpu._dense_columns`): two tiled products, or one after W + W.T when every anchor is
    in one block."""
    dtype = np.dtype(W.dtype)
    sums, accumulate_rows, accumulate_all, _ = kernels.backward_kernels(dtype.str)
    y = embeddings.y
    self_weight = dtype.type(0 if embeddings.metric == ANGULAR else 1)
    if whole:
        grid, threads = _grid_2d(*W.shape)
        kernels.elementwise_kernels(dtype.str)[1][grid, threads](W)  # W + W.T
    by_row = cuda.device_array(W.shape[0], dtype=np.float64)
    by_column = cuda.device_array(W.shape[1], dtype=np.float64)
    sums[_grid_1d(max(W.shape))](W, by_row, by_column)
    WY = cuda.device_array((W.shape[0], y.shape[1]), dtype=dtype)
    _matmul(kernels.PRODUCT, W, y, block, embeddings.sq, embeddings.metric, WY)
    if whole:  # S = W + W.T is symmetric: its row sums are its column sums
        accumulate_all[_grid_1d(h.shape[0])](h, y, by_row, WY, self_weight)
        return
    accumulate_rows[_grid_1d(W.shape[0])](h, block, y, by_row, WY, self_weight)
    block_y = _take_rows(y, block, cuda.device_array((W.shape[0], y.shape[1]), dtype=dtype))
    WtY = cuda.device_array(y.shape, dtype=dtype)
    _matmul(kernels.TRANSPOSED_PRODUCT, W, block_y, block, embeddings.sq, embeddings.metric, WtY)
    accumulate_all[_grid_1d(h.shape[0])](h, y, by_column, WtY, self_weight)


def _sums(outputs, n_anchors):
    sums = cuda.device_array(4, dtype=np.float64)
    kernels.totals_kernel(THREADS)[1, THREADS](outputs.totals[: max(n_anchors, 1)], sums)
    return sums.copy_to_host() if n_anchors else np.zeros(4)


def evaluate(batch, rule, want_grad, reduction="mean"):
    """(loss, TripletStats, gradient or None): the gradient is a NumPy array in the compute dtype
    for host input (the API casts it), a device array in the output dtype for device input.
    With reduction "none", the values per pair (per anchor for "hard") instead of the loss."""
    classes = class_tables(batch.codes, batch.anchors)
    x = _device_x(batch)
    dtype = np.dtype(x.dtype)
    embeddings = _Embeddings(batch, x)
    outputs = _Outputs(rule, classes, x.shape, dtype, want_grad, reduction, False)
    _run(batch, rule, embeddings, classes, want_grad, outputs)
    n_anchors = batch.anchors.shape[0]
    total, denominator, active, semihard = _sums(outputs, n_anchors)
    stats = TripletStats(classes.n_pairs, int(denominator), int(active), int(semihard))
    if reduction == "none":  # per pair, or per anchor for "hard"
        if rule.name == SEMIHARD:
            values = outputs.mined[4][: classes.n_pairs]
        elif rule.name == HARD:
            values = outputs.totals[:n_anchors]  # copied to the host below: its column 0
        else:
            values = outputs.values[: classes.n_pairs]
        values = values.copy_to_host()
        values = values[:, 0].astype(dtype) if rule.name == HARD else values
        return (values if _on_host(batch) else cuda.to_device(values)), stats, None
    scale = rule.scale(stats.denominator, reduction)
    if not want_grad:
        return total * scale, stats, None
    finish = kernels.backward_kernels(dtype.str)[3]
    grad = cuda.device_array(x.shape, dtype=dtype)
    angular = embeddings.metric == ANGULAR
    finish[_grid_1d(x.shape[0])](
        outputs.h,
        dtype.type(scale),
        angular,
        embeddings.normalized,
        embeddings.sq,
        embeddings.inv_norm,
        grad,
    )
    if _on_host(batch):
        return total * scale, stats, grad.copy_to_host()
    if np.dtype(batch.out_dtype) != dtype:
        grad = _copy(grad, batch.out_dtype)
    return total * scale, stats, grad


def mine(batch):
    """MiningResult of device arrays for device input, of NumPy arrays for host input."""
    classes = class_tables(batch.codes, batch.anchors)
    dtype = np.dtype(batch.x.dtype)
    if classes.n_pairs == 0:
        empty = MiningResult.from_rows([], dtype)
        return empty if _on_host(batch) else MiningResult(*map(cuda.to_device, _fields(empty)))
    x = _device_x(batch)
    outputs = _Outputs(Rule(SEMIHARD), classes, x.shape, dtype, False, "mean", True)
    _run(batch, Rule(SEMIHARD), _Embeddings(batch, x), classes, False, outputs)
    result = MiningResult(*(a[: classes.n_pairs] for a in outputs.mined))
    if _on_host(batch):
        return MiningResult(*(a.copy_to_host() for a in _fields(result)))
    return result


def _fields(result):
    return (result.anchor, result.positive, result.negative, result.semihard, result.loss)

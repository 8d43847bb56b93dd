"""Check the "cuda" backend on a real GPU, and time it against "cpu" and a cuBLAS product.

The CI runs the CUDA kernels only under Numba's simulator, which does no type inference: a kernel can
pass there and still fail to compile on a GPU. This script runs the same checks on a device:

1. every golden case of every rule (tests/data) on "cuda": loss and gradient, host and device
   input; anchors in blocks and shards that add up; semihard_numba.torch on CUDA tensors;
2. device-array input from CuPy and PyTorch when installed (loss, mine, gradient stay on the device);
3. repeated runs give bit-identical results;
4. timings at D = 128, float32, B in 1024 ... 16384: "cpu" (host input), "cuda" with host input
   (transfers included), "cuda" with device input, and a cuBLAS product x @ x.T (CuPy or PyTorch),
   and the crossover B from which "cuda" beats "cpu" on host input (the dispatcher's default is
   `_dispatch.DEFAULT_CUDA_MIN_BATCH`).

Usage:
    python bench/gpu_check.py                    # on a machine with a GPU (well under 5 minutes on an H200)
    python bench/gpu_check.py --simulate-small   # no GPU: Numba's CUDA simulator, tiny sizes
    python bench/gpu_check.py --ptx              # no GPU: compile every kernel to PTX (needs numba-cuda)

Exit status 1 when a correctness check fails.
"""

import argparse
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[1024, 4096, 8192, 16384, 65536],
        help="batch sizes to time (default: 1024 4096 8192 16384 65536)",
    )
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension D (default 128)")
    parser.add_argument(
        "--per-class",
        type=int,
        default=4,
        help="samples per class in the timed batches (default 4)",
    )
    parser.add_argument(
        "--two-classes-max",
        type=int,
        default=16384,
        help="also time batches of 2 classes up to this B (0: none)",
    )
    parser.add_argument(
        "--repeat", type=int, default=5, help="timed repetitions, the median is shown"
    )
    parser.add_argument(
        "--cpu-max",
        type=int,
        default=16384,
        help="largest B timed on the cpu backend (it is the slow one)",
    )
    parser.add_argument(
        "--simulate-small",
        action="store_true",
        help="run under NUMBA_ENABLE_CUDASIM=1 with tiny sizes (no GPU needed)",
    )
    parser.add_argument(
        "--ptx",
        action="store_true",
        help="only compile every kernel to PTX for --cc (no GPU needed; numba-cuda + NVVM)",
    )
    parser.add_argument("--cc", default="9.0", help="compute capability for --ptx (default 9.0)")
    args = parser.parse_args(argv)
    if args.simulate_small:
        args.sizes = [s for s in args.sizes if s <= 64] or [16]
        args.dim = min(args.dim, 8)
        args.repeat = 1
    return args


# Parse before numba is imported: the simulator must be switched on first.
ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is not None and ARGS.simulate_small:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

import semihard_numba as sn  # noqa: E402
from semihard_numba import _dispatch  # noqa: E402

FAILURES = []


def check(ok, what):
    print(f"  {'ok  ' if ok else 'FAIL'} {what}")
    if not ok:
        FAILURES.append(what)
    return ok


def close(a, b, rtol, atol):
    return bool(
        np.allclose(
            np.asarray(a, dtype=np.float64),
            np.asarray(b, dtype=np.float64),
            rtol=rtol,
            atol=atol,
            equal_nan=False,
        )
    )


def optional(name):
    try:
        module = __import__(name)
    except Exception as error:  # not installed, or installed without CUDA
        return None, f"{name} not usable ({type(error).__name__}: {error})"
    if name == "torch" and not module.cuda.is_available():
        return None, "torch installed without a usable CUDA device"
    if name == "cupy":
        try:
            module.zeros(1)
        except Exception as error:
            return None, f"cupy installed but unusable ({type(error).__name__}: {error})"
    return module, f"{name} {module.__version__}"


def environment():
    import numba

    print("== environment")
    print(f"  numpy {np.__version__}, numba {numba.__version__}, semihard_numba {sn.__version__}")
    for name, (usable, reason) in sn.backends().items():
        print(f"  backend {name:6s} {'usable' if usable else 'NOT usable'}: {reason}")
    if not sn.backends()["cuda"][0]:
        print("the cuda backend is not usable here: nothing to check")
        sys.exit(1)
    from semihard_numba import _cuda, _device

    if not _device.simulator_enabled():
        from numba import cuda

        device = cuda.get_current_device()
        print(
            f"  device: {device.name.decode() if isinstance(device.name, bytes) else device.name}, "
            f"compute capability {device.compute_capability}"
        )
    return _cuda


RULE_FUNCTIONS = {  # the golden files' functions -> (our loss_and_grad, keyword arguments)
    "triplet_semihard_loss": (sn.triplet_semihard_loss_and_grad, lambda c: {}),
    "triplet_hard_loss": (sn.triplet_hard_loss_and_grad, lambda c: {"soft": c.soft}),
    "st_batch_all": (sn.triplet_batch_all_loss_and_grad, lambda c: {}),
    "pml_semihard": (sn.triplet_all_semihard_loss_and_grad, lambda c: {}),
}


def golden_cases(_cuda, simulate):
    """Every golden case of every rule on "cuda", host and device input, at the golden files'
    tolerances; the cases where we deliberately differ from a reference (tests/golden.py) are
    compared with "python" instead."""
    print("== golden cases of every rule on cuda")
    from numba import cuda

    sys.path.insert(0, str(ROOT / "tests"))
    import golden

    differ = {golden.TF_TIE_LEAK_CASE, *golden.TF_SOFTPLUS_OVERFLOW_CASES}
    differ |= golden.TORCH_ROUNDING_CASES
    loaders = (golden.semihard_cases, golden.hard_cases)
    loaders += (golden.batch_all_cases, golden.all_semihard_cases)
    for load in loaders:
        cases = [c for c in load() if not simulate or len(c.labels) <= 8]
        failed = 0
        for c in cases:
            loss_and_grad, extra = RULE_FUNCTIONS[c.function]
            kw = dict(margin=c.margin, distance_metric=c.metric, **extra(c))
            loss, grad = loss_and_grad(c.labels, c.embeddings, backend="cuda", **kw)
            dloss, dgrad = loss_and_grad(
                c.labels, cuda.to_device(c.embeddings), backend="cuda", **kw
            )
            want, want_grad = (0.0 if np.isnan(c.loss) else c.loss), c.grad
            if c.case in differ or np.isnan(c.loss):
                want, want_grad = loss_and_grad(c.labels, c.embeddings, backend="python", **kw)
            atol = 1e-6
            if simulate and c.kind == "large_scale":  # no fused multiply-adds: tests/test_cuda.py
                D = sn._distances.pairwise_distances(c.embeddings, c.metric)
                atol = 4 * np.finfo(np.float32).eps * float(D.max())
            ok = close(loss, want, 1e-5, atol) and close(grad, want_grad, 1e-4, 1e-6)
            ok = ok and dloss == loss and close(dgrad.copy_to_host(), grad, 1e-6, 1e-7)
            if not ok:
                failed += 1
                print(f"  FAIL {c!r}: loss {loss} vs {want}")
        name = cases[0].function if cases else load.__name__
        check(failed == 0, f"{name}: {len(cases) - failed} of {len(cases)} golden cases")
    rng = np.random.default_rng(4)  # mining: the same negatives as cpu away from near-ties
    labels, x = rng.integers(0, 8, 64), rng.normal(size=(64, 16)).astype(np.float32)
    mined, ref = (sn.mine_semihard(labels, x, backend=b) for b in ("cuda", "cpu"))
    check(np.array_equal(mined.negative, ref.negative), "mine_semihard: cuda's negatives = cpu's")


def blocks_and_anchors(simulate):
    """Anchors in several blocks (a tiny SEMIHARD_NUMBA_BLOCK_BYTES): the same sums as one pass,
    and the sums over a partition of the anchors add up (float64)."""
    print("== anchor blocks and shards on cuda")
    rng = np.random.default_rng(5)
    B, rows = (24, 5) if simulate else (300, 64)
    labels, x = rng.integers(0, 6, B), rng.normal(size=(B, 8 if simulate else 24))
    shard = rng.integers(0, 3, B)
    for rule, fn in (
        ("semihard", sn.triplet_semihard_loss_and_grad),
        ("hard", sn.triplet_hard_loss_and_grad),
        ("batch-all", sn.triplet_batch_all_loss_and_grad),
        ("all-semihard", sn.triplet_all_semihard_loss_and_grad),
    ):
        whole, whole_grad = fn(labels, x, backend="cuda", reduction="sum")
        os.environ["SEMIHARD_NUMBA_BLOCK_BYTES"] = str(rows * B * 8)  # blocks of `rows` anchors
        try:
            parts = [
                fn(labels, x, backend="cuda", reduction="sum", anchors=shard == s) for s in range(3)
            ]
        finally:
            del os.environ["SEMIHARD_NUMBA_BLOCK_BYTES"]
        total = sum(p[0] for p in parts)
        grad = sum(p[1] for p in parts)
        scale = float(np.abs(whole_grad).max()) or 1.0
        check(
            close(total, whole, 1e-9, 0) and float(np.abs(grad - whole_grad).max()) <= 1e-9 * scale,
            f"{rule}: three shards in blocks of {rows} anchors add up to the whole",
        )


def torch_module(simulate):
    """semihard_numba.torch on CUDA tensors: the "cuda" backend, the gradient on the device."""
    print("== semihard_numba.torch on CUDA tensors")
    torch, note = optional("torch")
    if torch is None or simulate:
        print(f"  {note if torch is None else 'simulator'}: skipped")
        return
    from semihard_numba.torch import TripletLoss

    rng = np.random.default_rng(6)
    labels, x = rng.integers(0, 16, 512), rng.normal(size=(512, 32)).astype(np.float32)
    for rule in ("semihard", "hard", "batch-all", "all-semihard"):
        want_loss, want_grad = RULE_FUNCTIONS[
            {
                "semihard": "triplet_semihard_loss",
                "hard": "triplet_hard_loss",
                "batch-all": "st_batch_all",
                "all-semihard": "pml_semihard",
            }[rule]
        ][0](labels, x, backend="cpu")
        for dtype, tol in ((torch.float32, 1e-5), (torch.bfloat16, 2e-2)):
            xt = torch.tensor(x, device="cuda").to(dtype).requires_grad_()
            loss = TripletLoss(rule)(torch.tensor(labels, device="cuda"), xt)
            loss.backward()
            check(
                xt.grad.device.type == "cuda"
                and xt.grad.dtype == dtype
                and close(loss.item(), want_loss, tol, tol)
                and close(xt.grad.float().cpu().numpy(), want_grad, 100 * tol, 1e-3 * tol),
                f"{rule} {dtype}: loss and gradient match cpu, the gradient stays on the GPU",
            )


def device_frameworks(_cuda):
    print("== device-array input from CuPy / PyTorch")
    rng = np.random.default_rng(1)
    B, D = 256, 32
    labels = rng.integers(0, 16, B)
    x = rng.normal(size=(B, D)).astype(np.float32)
    want_loss, want_grad = sn.triplet_semihard_loss_and_grad(labels, x, backend="cpu")
    cp, cp_note = optional("cupy")
    torch, torch_note = optional("torch")
    print(f"  {cp_note}\n  {torch_note}")
    inputs = []
    if cp is not None:
        inputs.append(("cupy float32", cp.asarray(x), cp.asarray(labels), np.float32))
        inputs.append(("cupy float16", cp.asarray(x.astype(np.float16)), labels, np.float16))
    if torch is not None:
        xt = torch.as_tensor(x, device="cuda")
        inputs.append(("torch float32", xt, torch.as_tensor(labels, device="cuda"), np.float32))
        inputs.append(("torch transposed view", xt.T.contiguous().T, labels, np.float32))
        inputs.append(("torch float16", xt.half(), labels, np.float16))
    for name, xd, ld, dtype in inputs:
        loss, grad = sn.triplet_semihard_loss_and_grad(ld, xd)  # backend="auto"
        mined = sn.mine_semihard(ld, xd)
        tol = 1e-5 if dtype == np.float32 else 2e-2
        on_device = _cuda.is_device_array(grad) and _cuda.is_device_array(mined.negative)
        check(
            on_device
            and grad.dtype == dtype
            and close(loss, want_loss, tol, tol)
            and close(
                grad.copy_to_host(),
                want_grad,
                1e2 * tol,
                1e-2 * tol if dtype == np.float32 else 1e-3,
            ),
            f"{name}: auto -> cuda, loss/grad match cpu, results stay on the device",
        )
    if torch is not None:
        needs_grad = torch.as_tensor(x, device="cuda").requires_grad_()
        try:
            sn.triplet_semihard_loss(labels, needs_grad)
            check(False, "torch tensor requiring grad: expected a clear error")
        except Exception as error:
            check(
                "detach" in str(error),
                f"torch tensor requiring grad: {type(error).__name__} mentions detach()",
            )
    if not inputs:
        print("  (neither CuPy nor PyTorch with CUDA is installed: numba device arrays only)")


def determinism(sizes, dim):
    print("== repeat-run determinism")
    from numba import cuda

    B = max(s for s in sizes)
    B = min(B, 4096)
    rng = np.random.default_rng(2)
    labels = rng.integers(0, max(1, B // 8), B)
    x = cuda.to_device(rng.normal(size=(B, dim)).astype(np.float32))
    losses = {sn.triplet_semihard_loss(labels, x, backend="cuda").tobytes() for _ in range(3)}
    grads = {
        sn.triplet_semihard_loss_and_grad(labels, x, backend="cuda")[1].copy_to_host().tobytes()
        for _ in range(2)
    }
    check(len(losses) == 1 and len(grads) == 1, f"B={B}: 3 losses and 2 gradients bit-identical")


def median_time(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def timings(args, _cuda):
    print(
        f"== timings, D={args.dim}, float32, {args.per_class} samples per class, median of {args.repeat}"
    )
    from numba import cuda

    cp, _ = optional("cupy")
    torch, _ = optional("torch")
    if torch is not None:
        torch.backends.cuda.matmul.allow_tf32 = False  # an FP32 product, like ours
    rng = np.random.default_rng(3)
    rows = []
    shapes = [(B, args.per_class) for B in args.sizes]
    shapes += [(B, B // 2) for B in args.sizes if B <= args.two_classes_max]
    for B, per_class in shapes:
        labels = rng.permutation(np.arange(B) // per_class)
        x = rng.normal(size=(B, args.dim)).astype(np.float32)
        x_dev = cuda.to_device(x)
        sn.triplet_semihard_loss(labels, x_dev, backend="cuda")  # compile / warm up
        row = {"B": B, "per class": per_class}
        if B <= args.cpu_max:
            sn.triplet_semihard_loss(labels, x, backend="cpu")
            row["cpu"] = median_time(
                lambda: sn.triplet_semihard_loss(labels, x, backend="cpu"), args.repeat
            )
        row["cuda host"] = median_time(
            lambda: sn.triplet_semihard_loss(labels, x, backend="cuda"), args.repeat
        )
        row["cuda device"] = median_time(
            lambda: sn.triplet_semihard_loss(labels, x_dev, backend="cuda"), args.repeat
        )
        row["cuda grad device"] = median_time(
            lambda: sn.triplet_semihard_loss_and_grad(labels, x_dev, backend="cuda")[
                1
            ].copy_to_host(),
            max(1, args.repeat // 2),
        )
        if cp is not None:
            xc = cp.asarray(x)
            (xc @ xc.T)
            cp.cuda.Device().synchronize()

            def product():
                xc @ xc.T
                cp.cuda.Device().synchronize()

            row["cuBLAS x@x.T"] = median_time(product, args.repeat)
            row["cuBLAS via"] = "cupy"
        elif torch is not None:
            xt = torch.as_tensor(x, device="cuda")
            (xt @ xt.T)
            torch.cuda.synchronize()

            def product():
                xt @ xt.T
                torch.cuda.synchronize()

            row["cuBLAS x@x.T"] = median_time(product, args.repeat)
            row["cuBLAS via"] = "torch"
        rows.append(row)
        parts = [f"{k} {v * 1e3:9.2f} ms" for k, v in row.items() if isinstance(v, float)]
        if "cuBLAS x@x.T" in row:
            parts.append(f"cuda device / cuBLAS = {row['cuda device'] / row['cuBLAS x@x.T']:.2f}x")
        print(f"  B={B:6d}, {per_class} per class: " + ", ".join(parts), flush=True)
    timed = [r for r in rows if "cpu" in r and r["per class"] == args.per_class]
    faster = [r["B"] for r in timed if r["cuda host"] < r["cpu"]]
    crossover = None
    for r in timed:  # the smallest B from which cuda stays faster
        if all(s["cuda host"] < s["cpu"] for s in timed if s["B"] >= r["B"]):
            crossover = r["B"]
            break
    print(f"  cuda (host input, transfers included) faster than cpu at B in {faster}")
    print(
        f"  crossover B: {crossover} (dispatcher default {_dispatch.DEFAULT_CUDA_MIN_BATCH}; "
        f"set {_dispatch.CUDA_MIN_BATCH_ENV} to override)"
    )
    for per_class, limit in ((args.per_class, 2), (4096, 4)):
        at = [r for r in rows if r["B"] == 8192 and r["per class"] == per_class]
        if at and "cuBLAS x@x.T" in at[0]:
            ratio = at[0]["cuda device"] / at[0]["cuBLAS x@x.T"]
            print(
                f"  target: B=8192, {per_class} per class, cuda (device input) within {limit}x "
                f"of cuBLAS x@x.T: {ratio:.2f}x ({'met' if ratio <= limit else 'NOT met'})"
            )
    return rows


def ptx_only(cc):
    """Compile every kernel for compute capability `cc` without a GPU (type inference + NVVM),
    the shared Numba functions they call included."""
    import types as pytypes

    from numba import cuda
    from numba import types as t

    from semihard_numba import _cuda, _cuda_kernels
    from semihard_numba._rules import CODES

    try:  # device functions otherwise ask the (absent) driver for the current device
        import numba.cuda.dispatcher as dispatcher

        dispatcher.get_current_device = lambda: pytypes.SimpleNamespace(compute_capability=cc)
    except Exception:
        pass
    ok = True
    for dt, f in (("<f4", t.float32), ("<f8", t.float64)):
        M, V, I = f[:, ::1], f[::1], t.int64[::1]
        classes = t.Tuple((t.int32[::1], I, I, I, I))
        totals = t.float64[:, ::1]
        common = (M, I, classes, f, t.int64, totals)
        mined = t.Tuple((I, I, I, t.boolean[::1], V))
        chosen = t.Tuple((V, I))
        row_norms, symmetrize = _cuda_kernels.elementwise_kernels(dt)
        sums, accumulate_rows, accumulate_all, finish = _cuda_kernels.backward_kernels(dt)
        F64 = t.float64[::1]
        kernels = {
            "totals": (_cuda_kernels.totals_kernel(_cuda.THREADS), (totals, F64)),
            "row_norms": (row_norms, (M, t.int64, V, M, V)),
            "symmetrize": (symmetrize, (M,)),
            "sums": (sums, (M, F64, F64)),
            "accumulate_rows": (accumulate_rows, (M, I, M, F64, M, f)),
            "accumulate_all": (accumulate_all, (M, M, F64, M, f)),
            "finish": (finish, (M, f, t.boolean, M, V, V, M)),
            "take_rows": (_cuda_kernels.take_rows_kernel, (M, I, M)),
            "nonfinite": (_cuda_kernels.nonfinite_rows_kernel, (M, t.uint8[::1])),
        }
        for mode in ("GRAM", "PRODUCT", "TRANSPOSED_PRODUCT"):
            kernel = _cuda_kernels.matmul_kernel(
                dt, _cuda.TILE, _cuda.REG, getattr(_cuda_kernels, mode)
            )
            kernels[f"matmul {mode}"] = (kernel, (M, M, I, V, t.int64, M))
        for want_mine, want_grad in ((False, False), (True, False), (False, True)):
            kernel = _cuda_kernels.semihard_kernel(dt, _cuda.THREADS, want_mine, want_grad)
            kernels[f"semihard mine={want_mine} grad={want_grad}"] = (
                kernel,
                (*common, mined, chosen),
            )
        for soft in (False, True):
            for want_grad in (False, True):
                kernel = _cuda_kernels.hard_kernel(dt, _cuda.THREADS, soft, want_grad)
                kernels[f"hard soft={soft} grad={want_grad}"] = (kernel, common)
        for rule in ("batch-all", "all-semihard"):
            for want_grad, want_values in ((False, False), (True, False), (False, True)):
                kernel = _cuda_kernels.every_triplet_kernel(
                    dt, _cuda.THREADS, CODES[rule], want_grad, want_values
                )
                name = f"{rule} grad={want_grad} values={want_values}"
                kernels[name] = (kernel, (*common, t.Tuple((I, V))))
        for name, (kernel, sig) in kernels.items():
            try:
                cuda.compile_ptx(kernel.py_func, sig, cc=cc)
                print(f"  ok   {np.dtype(dt).name} {name}")
            except Exception as error:
                ok = False
                print(f"  FAIL {np.dtype(dt).name} {name}: {type(error).__name__}: {error}")
    for src, dst in (
        (t.float16[:, :], t.float32[:, ::1]),
        (t.int32[:, :], t.float64[:, ::1]),
        (t.float32[:, :], t.float32[:, ::1]),
        (t.float32[:, ::1], t.float16[:, ::1]),
    ):
        try:
            cuda.compile_ptx(_cuda_kernels.copy_kernel.py_func, (src, dst), cc=cc)
            print(f"  ok   copy {src} -> {dst}")
        except Exception as error:
            ok = False
            print(f"  FAIL copy {src} -> {dst}: {type(error).__name__}: {error}")
    return ok


def main(args):
    if args.ptx:
        cc = tuple(int(v) for v in args.cc.split("."))
        print(f"== compiling every kernel to PTX for compute capability {cc}")
        sys.exit(0 if ptx_only(cc) else 1)
    start = time.perf_counter()
    _cuda = environment()
    if args.simulate_small:
        print("  (simulator: small launches, tiny sizes; timings are meaningless)")
        _cuda.TILE, _cuda.REG, _cuda.THREADS, _cuda.MAX_BLOCKS = 4, 2, 8, 16
    golden_cases(_cuda, args.simulate_small)
    blocks_and_anchors(args.simulate_small)
    torch_module(args.simulate_small)
    device_frameworks(_cuda)
    determinism(args.sizes, args.dim)
    timings(args, _cuda)
    print(
        f"== done in {time.perf_counter() - start:.0f} s: "
        f"{'all checks passed' if not FAILURES else f'{len(FAILURES)} FAILED'}"
    )
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main(ARGS)

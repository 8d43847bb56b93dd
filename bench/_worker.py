"""One measurement in a fresh process: ``python -m bench._worker SPEC.json OUT.json``.

The parent (bench/run.py) starts one of these per (implementation, batch size), so that imports,
compilation and peak memory of one implementation never leak into another's figures.

Peak memory: on Linux the process's resident high-water mark (VmHWM) is reset by writing "5" to
/proc/self/clear_refs just before the first call and again before one warm call, and read back
after each; "peak extra" is the larger of the two marks minus the resident size at its reset
(imports and data excluded; the first call's includes compilation or graph tracing). Elsewhere it
falls back to ru_maxrss minus the resident size before the first call.
"""

import json
import os
import sys
import time

import numpy as np

BACKENDS = ("python", "numpy", "cpu", "cuda")  # semihard_numba's, called as backend=...
PEER_NAMES = {"tfa": "tfa", "sentence-transformers": "sentence_transformers", "pml": "pml"}
# sorted_search_min_positives that no anchor reaches: the "cpu" kernel runs the post's loop for
# every anchor ("loop"), however large its class
NEVER = 10**9


def _status_kib(field):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise OSError(field)


class PeakMemory:
    """Peak resident bytes above the level at `reset()`."""

    def __init__(self):
        try:
            _status_kib("VmHWM")
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.method = "VmHWM reset via /proc/self/clear_refs"
        except OSError:
            self.method = "ru_maxrss minus RSS before the first call"
        self.start = self.rss()

    @staticmethod
    def rss():
        try:
            return _status_kib("VmRSS")
        except OSError:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def reset(self):
        if self.method.startswith("VmHWM"):
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
            self.start = self.rss()

    def peak_extra(self):
        if self.method.startswith("VmHWM"):
            return max(0, _status_kib("VmHWM") - self.start)
        import resource

        return max(0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - self.start)


def _floor(x, budget_bytes):
    """(x @ x.T as a function, what it is). Where the B x B result would take more than a quarter
    of the memory budget (B = 32768 in float32 is 4 GiB), the same product in blocks of rows
    written into one reused buffer, the blocks of the "cpu" backend (`_distances.block_rows`):
    each block is a gemm, while NumPy's whole x @ x.T is a syrk (half the multiplications, then a
    mirroring copy; bench/README.md), so ratios to the floor change meaning at that size."""
    B, itemsize = x.shape[0], x.dtype.itemsize
    if B * B * itemsize <= budget_bytes / 4:
        return (lambda: x @ x.T), "numpy x @ x.T"
    from semihard_numba._distances import block_rows

    rows = block_rows(B, itemsize)
    out = np.empty((rows, B), dtype=x.dtype)

    def floor():
        for start in range(0, B, rows):
            stop = min(start + rows, B)
            np.matmul(x[start:stop], x.T, out=out[: stop - start])
        return out

    return floor, f"numpy x[rows] @ x.T, blocks of {rows} rows into one buffer (gemm)"


def _library_functions(impl, rule, labels, x, margin):
    """(loss(), loss_and_grad()) of semihard_numba for `impl`: a backend, "loop" (the "cpu"
    kernel without its sorted search) or "torch" (the nn.Module on CPU tensors)."""
    from bench.peers import library_functions, library_rule

    name, soft = library_rule(rule)
    if impl == "loop":
        from semihard_numba import _cpu
        from semihard_numba._inputs import host_batch
        from semihard_numba._rules import Rule

        def loop(want_grad):
            batch = host_batch(labels, x, margin, "L2")
            loss, _, grad = _cpu.evaluate(
                batch, Rule(name, soft), want_grad, sorted_search_min_positives=NEVER
            )
            loss = batch.out_dtype.type(loss)  # as the functions return it
            return (loss, grad) if want_grad else loss

        return lambda: loop(False), lambda: loop(True)
    if impl == "torch":
        import torch

        from semihard_numba.torch import TripletLoss

        module = TripletLoss(name, margin=margin, soft=soft)
        y = torch.from_numpy(labels)

        def forward_backward():
            xt = torch.from_numpy(x).requires_grad_()
            loss = module(y, xt)
            loss.backward()
            return loss.item(), xt.grad.numpy()

        return lambda: module(y, torch.from_numpy(x)).item(), forward_backward
    loss, loss_and_grad = library_functions(rule)
    return (
        lambda: loss(labels, x, margin, backend=impl),
        lambda: loss_and_grad(labels, x, margin, backend=impl),
    )


def _functions(spec, labels, x):
    """(loss(), loss_and_grad() or None, floor(), floor_kind) for one implementation."""
    impl, rule, margin = spec["impl"], spec["rule"], spec["margin"]
    floor, floor_kind = _floor(x, spec["budget_bytes"])
    if impl == "floor":
        return floor, None, floor, floor_kind
    if impl == "cuda":
        floor, floor_kind = _gpu_floor(x) or (floor, floor_kind)
    if impl in (*BACKENDS, "loop", "torch"):
        return (*_library_functions(impl, rule, labels, x, margin), floor, floor_kind)
    from bench import peers

    peer = PEER_NAMES[impl]
    peers.prepare(peer, rule, margin)
    return (
        lambda: peers.loss(peer, rule, labels, x, margin),
        lambda: peers.loss_and_grad(peer, rule, labels, x, margin),
        floor,
        floor_kind,
    )


def _gpu_floor(x):
    """x @ x.T on the GPU (CuPy, else PyTorch), synchronised, or None."""
    try:
        import cupy

        xd = cupy.asarray(x)

        def floor():
            r = xd @ xd.T
            cupy.cuda.Device().synchronize()
            return r

        return floor, "cupy x @ x.T (GPU)"
    except Exception:
        pass
    try:
        import torch

        if torch.cuda.is_available():
            xd = torch.from_numpy(x).cuda()

            def floor():
                r = xd @ xd.T
                torch.cuda.synchronize()
                return r

            return floor, "torch x @ x.T (GPU)"
    except Exception:
        pass
    return None


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def _measure(fn, floor, peak, repeats, budget_s):
    """First call, one warm call alone, then warm calls interleaved with the floor.

    Peak memory is taken over the first call and over the warm call separately and the larger is
    reported: the first includes compilation, but frameworks that keep their memory pooled
    (TensorFlow's allocator) only grow the resident set on the first call."""
    peak.reset()
    first, out = _timed(fn)
    peak_first = peak.peak_extra()
    peak.reset()
    t, out = _timed(fn)
    peak_warm = peak.peak_extra()
    peak_extra = max(peak_first, peak_warm)
    times, floors = [t], []
    floors.append(_timed(floor)[0])
    while len(times) < repeats and sum(times) < budget_s:
        floors.append(_timed(floor)[0])
        times.append(_timed(fn)[0])
    return {
        "first_s": first,
        "times_s": times,
        "floor_times_s": floors,
        "peak_extra_bytes": peak_extra,
        "peak_first_bytes": peak_first,
        "peak_warm_bytes": peak_warm,
    }, out


def _loss_value(out):
    return float(out[0] if isinstance(out, tuple) else out)


def main(spec_path, out_path):
    with open(spec_path) as f:
        spec = json.load(f)
    from bench.data import batch_statistics, benchmark_batch

    result = {"spec": spec, "pid": os.getpid(), "numpy": np.__version__}
    try:
        labels, x = benchmark_batch(
            spec["B"], spec["k"], spec["classes"], spec["D"], spec["noise"], spec["seed"]
        )
        loss_fn, grad_fn, floor, floor_kind = _functions(spec, labels, x)
        result["floor_kind"] = floor_kind
        peak = PeakMemory()
        result["peak_method"] = peak.method
        result["loss"], out = _measure(loss_fn, floor, peak, spec["repeats"], spec["budget_s"])
        if spec["impl"] != "floor":
            result["loss"]["value"] = _loss_value(out)
        if grad_fn is not None and spec["grad"]:
            result["grad"], out = _measure(grad_fn, floor, peak, spec["repeats"], spec["budget_s"])
            result["grad"]["value"] = _loss_value(out)
            grad = np.asarray(
                out[1] if not hasattr(out[1], "copy_to_host") else out[1].copy_to_host()
            )
        else:
            grad = None
        # Checks after the measurements, so they touch neither the times nor the peaks.
        if spec["check"]:
            from bench.peers import library_functions

            if spec["impl"] != "floor":  # "cpu" of the same rule
                ref_loss, ref_grad = library_functions(spec["rule"])[1](
                    labels, x, spec["margin"], backend="cpu"
                )
                result["ref_loss"] = float(ref_loss)
                if grad is not None:
                    scale = float(np.abs(ref_grad).max()) or 1.0
                    result["grad_rel_diff"] = float(np.abs(grad - ref_grad).max()) / scale
            if spec["stats"]:
                result["stats"] = batch_statistics(labels, x, spec["margin"])
    except MemoryError as error:
        result["error"] = f"MemoryError: {error}"
    except Exception as error:  # reported in the table, never hidden
        result["error"] = f"{type(error).__name__}: {error}"
    with open(out_path, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])

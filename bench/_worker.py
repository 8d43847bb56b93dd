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

SEMIHARD_BACKENDS = ("python", "numpy", "cpu", "cuda")
PEER_NAMES = {"tfa": "tfa", "sentence-transformers": "sentence_transformers", "pml": "pml"}


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


def _functions(impl, labels, x, margin):
    """(loss(), loss_and_grad() or None, floor(), floor_kind) for one implementation."""
    floor_kind = "numpy x @ x.T"

    def floor():
        return x @ x.T

    if impl == "floor":
        return floor, None, floor, floor_kind
    if impl in SEMIHARD_BACKENDS:
        import semihard_numba

        if impl == "cuda":
            floor, floor_kind = _gpu_floor(x) or (floor, floor_kind)
        return (
            lambda: semihard_numba.triplet_semihard_loss(labels, x, margin, backend=impl),
            lambda: semihard_numba.triplet_semihard_loss_and_grad(labels, x, margin, backend=impl),
            floor,
            floor_kind,
        )
    from bench import peers

    loss_fn, grad_fn = peers.PEERS[PEER_NAMES[impl]]
    # Import the framework and build the loss objects now, so that the first call times the
    # framework's first run (graph tracing, kernel selection), not `import tensorflow`.
    {
        "tfa": lambda: peers._import_tf(),
        "sentence-transformers": lambda: peers._st_loss_object(margin),
        "pml": lambda: peers._pml_objects(margin),
    }[impl]()
    return (
        lambda: loss_fn(labels, x, margin),
        lambda: grad_fn(labels, x, margin),
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
    from bench.data import batch_statistics, clustered_batch

    result = {"spec": spec, "pid": os.getpid(), "numpy": np.__version__}
    try:
        labels, x = clustered_batch(spec["B"], spec["k"], spec["D"], spec["noise"], spec["seed"])
        loss_fn, grad_fn, floor, floor_kind = _functions(spec["impl"], labels, x, spec["margin"])
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
            import semihard_numba

            if spec["impl"] != "floor":
                ref_loss, ref_grad = semihard_numba.triplet_semihard_loss_and_grad(
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

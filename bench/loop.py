"""The loss as users call it, in a loop, under five thread settings: ``python -m bench.loop``.

Three loops, each call timed inside the loop, medians in ms:

- **plain**: the loss, then the loss and its gradient, called back to back;
- **numpy**: a NumPy training step: forward ``E = X @ W``, the loss and its gradient, backward
  ``W -= lr * X.T @ g``; the same step with a no-op loss (a zero gradient) gives the cost of the
  user's own products without ours beside them;
- **torch**: a PyTorch step on CPU tensors: a ``Linear`` forward, `semihard_numba.torch`'s
  module, ``backward``, an SGD step; the same step with sentence-transformers'
  ``BatchSemiHardTripletLoss`` when it is installed, and with a no-op loss.

Beside them, the plain gemm of the same batch (``x @ x.copy().T``, the product the library
cannot avoid) is timed in a loop of its own. Every setting runs in its own process, because
``OPENBLAS_THREAD_TIMEOUT``, ``OMP_WAIT_POLICY`` and the thread counts are read when the
libraries load: the default environment, the two waits shortened, both, and one thread for each
pool. Batches: D = 128, 4 samples per class, and 2 classes of B / 2 (``--classes``).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = {
    "default": {},
    "OPENBLAS_THREAD_TIMEOUT=4": {"OPENBLAS_THREAD_TIMEOUT": "4"},
    "OMP_WAIT_POLICY=passive": {"OMP_WAIT_POLICY": "passive"},
    "both": {"OPENBLAS_THREAD_TIMEOUT": "4", "OMP_WAIT_POLICY": "passive"},
    "one thread each": {"OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
}
# variables a setting may set: removed from the others' environments
CONTROLLED = sorted({name for extra in SETTINGS.values() for name in extra})
LOOPS = ("plain", "numpy", "torch")
INPUT_DIM = 512  # the training steps' input features: X is (B, 512), W (512, 128)
LEARNING_RATE = 1e-3
PEER_MAX_BATCH = 1024  # sentence-transformers takes seconds a call beyond


def _median_ms(times):
    return statistics.median(times) * 1e3


# Before each loop: longer than OpenBLAS's workers spin after a product (about 0.1 s), so that a
# loop is timed in its own steady state, not in the wake of the loop before it.
SETTLE_S = 0.3


def _timed(calls, repeats, warmup=2):
    """Run calls() warmup + repeats times; it returns a dict of durations (s) of its parts.
    Medians in ms of each part over the timed repeats."""
    time.sleep(SETTLE_S)
    parts = {}
    for repeat in range(warmup + repeats):
        for name, seconds in calls().items():
            if repeat >= warmup:
                parts.setdefault(name, []).append(seconds)
    return {name: _median_ms(times) for name, times in parts.items()}


def plain_loop(labels, x, repeats):
    import semihard_numba as sn

    def gemm():
        start = time.perf_counter()
        x @ x.copy().T
        return {"gemm": time.perf_counter() - start}

    out = _timed(gemm, repeats)
    for name, fn in (
        ("loss", sn.triplet_semihard_loss),
        ("loss and gradient", sn.triplet_semihard_loss_and_grad),
    ):

        def call(fn=fn, name=name):
            start = time.perf_counter()
            fn(labels, x)
            return {name: time.perf_counter() - start}

        out.update(_timed(call, repeats))
    return out


def numpy_step(labels, x, repeats):
    """The NumPy training step with our loss and with a no-op loss."""
    import numpy as np

    import semihard_numba as sn

    rng = np.random.default_rng(1)
    X = rng.standard_normal((x.shape[0], INPUT_DIM)).astype(np.float32)
    out = {}
    for name, loss_and_grad in (
        ("", sn.triplet_semihard_loss_and_grad),
        ("no-op ", lambda labels, E: (0.0, np.zeros_like(E))),
    ):
        W = (rng.standard_normal((INPUT_DIM, x.shape[1])) / np.sqrt(INPUT_DIM)).astype(np.float32)

        def step(W=W, loss_and_grad=loss_and_grad, name=name):
            t0 = time.perf_counter()
            E = X @ W
            t1 = time.perf_counter()
            _, g = loss_and_grad(labels, E)
            t2 = time.perf_counter()
            W -= LEARNING_RATE * (X.T @ g)
            t3 = time.perf_counter()
            parts = {f"{name}step": t3 - t0, f"{name}products": (t1 - t0) + (t3 - t2)}
            if not name:
                parts["loss and gradient"] = t2 - t1
            return parts

        out.update(_timed(step, repeats))
    return out


def torch_step(labels, x, repeats):
    """The PyTorch training step with our module, sentence-transformers' (if installed) and a
    no-op loss."""
    import torch

    from semihard_numba.torch import TripletSemiHardLoss

    losses = {"": TripletSemiHardLoss(), "no-op ": lambda labels, E: (E * 0).sum()}
    if x.shape[0] <= PEER_MAX_BATCH:
        try:
            from bench.peers import _st_loss_object

            losses["sentence-transformers "] = _st_loss_object(1.0, "semihard")
        except ImportError:
            pass
    torch.manual_seed(1)
    X = torch.randn(x.shape[0], INPUT_DIM)
    y = torch.from_numpy(labels)
    out = {}
    for name, loss_fn in losses.items():
        model = torch.nn.Linear(INPUT_DIM, x.shape[1])
        optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE)

        def step(model=model, optimizer=optimizer, loss_fn=loss_fn, name=name):
            t0 = time.perf_counter()
            E = model(X)
            t1 = time.perf_counter()
            loss = loss_fn(y, E)
            t2 = time.perf_counter()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            t3 = time.perf_counter()
            return {f"{name}step": t3 - t0, f"{name}loss": t2 - t1}

        out.update(_timed(step, repeats))
    return out


def child(sizes, batches, loops, repeats):
    """{batch: {B: {loop: {part: ms}}}} in this process's environment."""
    from bench.data import benchmark_batch

    runners = {"plain": plain_loop, "numpy": numpy_step, "torch": torch_step}
    results = {}
    for batch in batches:
        for B in sizes:
            labels, x = benchmark_batch(B, classes=2 if batch == "2 classes" else None)
            for loop in loops:
                if loop == "torch":
                    try:
                        import torch  # noqa: F401
                    except ImportError:
                        continue
                results.setdefault(batch, {}).setdefault(str(B), {})[loop] = runners[loop](
                    labels, x, repeats
                )
    return results


def run_setting(name, args):
    """The child's results under setting `name`, in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    env.update(SETTINGS[name], PYTHONPATH=ROOT)
    command = [sys.executable, "-m", "bench.loop", "--child", "--repeats", str(args.repeats)]
    command += ["--sizes", *map(str, args.sizes), "--loops", *args.loops]
    command += ["--batches", *args.batches]
    child = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if child.returncode != 0:
        sys.exit(f"{name}: {child.stderr}")
    return json.loads(child.stdout.splitlines()[-1])


def _cell(value):
    return "" if value is None else f"{value:.3g}"


def tables(results, settings):
    """Markdown: one table per batch kind and loop, a row per (B, part), a column per setting."""
    lines = []
    first = results[settings[0]]
    for batch, by_size in first.items():
        loops = next(iter(by_size.values())).keys()
        for loop in loops:
            lines += [f"\n**{loop}** loop, {batch}, ms (median)\n"]
            lines += ["| B | part | " + " | ".join(settings) + " |"]
            lines += ["|---|---|" + "---:|" * len(settings)]
            for B, by_loop in by_size.items():
                for part in by_loop[loop]:
                    cells = [
                        _cell(results[s].get(batch, {}).get(B, {}).get(loop, {}).get(part))
                        for s in settings
                    ]
                    lines.append(f"| {B} | {part} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.loop", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024, 4096])
    p.add_argument(
        "--batches",
        nargs="+",
        default=["4 per class", "2 classes"],
        choices=["4 per class", "2 classes"],
    )
    p.add_argument("--loops", nargs="+", default=list(LOOPS), choices=LOOPS)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--repeats", type=int, default=15, help="timed calls per part (default 15)")
    p.add_argument("--out", help="also write the results as JSON and the tables as Markdown here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print(json.dumps(child(a.sizes, a.batches, a.loops, a.repeats)))
        return
    results = {name: run_setting(name, a) for name in a.settings}
    md = tables(results, a.settings)
    print(md)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
        with open(os.path.join(a.out, "loop.json"), "w") as f:
            json.dump(results, f, indent=1)
        with open(os.path.join(a.out, "loop.md"), "w") as f:
            f.write(md + "\n")


if __name__ == "__main__":
    main()

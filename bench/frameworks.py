"""The loss and its gradient inside each framework, against the same NumPy call in the same
process: ``python -m bench.frameworks``; and TensorFlow Addons side by side: ``python -m
bench.frameworks --tfa`` (run by the peers environment's Python: TF 2.15, tf.keras 2, TFA).

Frameworks (one fresh process each; the Keras ones with KERAS_BACKEND set before Keras loads):

- "jax": ``jax.jit(jax.value_and_grad(semihard_numba.jax.triplet_semihard_loss))``;
- "tensorflow": a ``tf.function`` with a ``GradientTape`` around
  ``semihard_numba.tensorflow.triplet_semihard_loss``;
- "torch": ``semihard_numba.torch.TripletSemiHardLoss`` forward and ``backward()``;
- "keras-jax", "keras-tensorflow", "keras-torch": ``semihard_numba.keras.TripletSemiHardLoss``
  called in the same three steps, on that Keras backend.

Each step computes the loss and d loss / d embeddings of a clustered batch (bench/data.py: D = 128,
4 per class) and waits for the result. Per round, the NumPy call
``semihard_numba.triplet_semihard_loss_and_grad(labels, x)`` and the framework's step are timed
one after the other, in the same process, after the framework has loaded and run (so whatever its
thread pools do to the Numba kernel is in both); reported: the medians and **the ratio of the
medians, framework / NumPy**. The machine is shared and noisy: the ratio is the figure to read.
Beside it, the NumPy call timed alone in a process that loads no framework ("numpy" worker), and
the framework's step over that: what loading and running the framework costs the kernel as well.

``--tfa``: per B, in one process, a tf.keras 2 training step (``train_on_batch``) of the same
model (Dense(128) on 128 features) compiled with ``tfa.losses.TripletSemiHardLoss()`` and with
``semihard_numba.tensorflow.triplet_semihard_loss``, and the loss and gradient alone in a
``tf.function`` for each; reported: the medians and TFA's time over ours. TFA's tensor algebra
needs about 18 B^3 bytes (18 GiB at B = 1024; see bench/README.md): sizes whose estimate passes
``--max-mem-gib`` (default: 3/4 of the available memory) are skipped and say so.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS = ("jax", "tensorflow", "torch", "keras-jax", "keras-tensorflow", "keras-torch")
BARE = "numpy"  # the NumPy call alone, in a process that loads no framework
TFA_BYTES_PER_B3 = 18  # TFA's measured peak per B^3 (bench/README.md)


def _ms(seconds):
    return 1e3 * statistics.median(seconds)


def _rounds(steps, repeats, budget_s, warmup=2):
    """Time each step of `steps` (name -> callable) once per round, one after the other, for
    `repeats` rounds or until `budget_s` has passed (at least 5). Returns name -> seconds."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times = {name: [] for name in steps}
    start = time.perf_counter()
    for round_ in range(repeats):
        for name, step in steps.items():
            t = time.perf_counter()
            step()
            times[name].append(time.perf_counter() - t)
        if round_ >= 4 and time.perf_counter() - start > budget_s:
            break
    return times


def _framework_step(framework, labels, x):
    """The framework's loss-and-gradient step on (labels, x), as a callable that waits for it."""
    if framework.startswith("keras-"):
        from semihard_numba.keras import TripletSemiHardLoss

        loss_fn = TripletSemiHardLoss()
        framework = framework[len("keras-") :]
    if framework == "jax":
        import jax

        if "loss_fn" not in locals():
            from semihard_numba.jax import triplet_semihard_loss as loss_fn
        step = jax.jit(jax.value_and_grad(lambda x, labels: loss_fn(labels, x)))
        x_jax, labels_jax = jax.numpy.asarray(x), jax.numpy.asarray(labels)
        return lambda: step(x_jax, labels_jax)[1].block_until_ready()
    if framework == "tensorflow":
        import tensorflow as tf

        if "loss_fn" not in locals():
            from semihard_numba.tensorflow import triplet_semihard_loss as loss_fn

        @tf.function
        def step(labels, x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = loss_fn(labels, x)
            return value, tape.gradient(value, x)

        x_tf, labels_tf = tf.constant(x), tf.constant(labels)
        return lambda: step(labels_tf, x_tf)[1].numpy()
    if framework == "torch":
        import torch

        if "loss_fn" not in locals():
            from semihard_numba.torch import TripletSemiHardLoss

            loss_fn = TripletSemiHardLoss()
        x_torch = torch.from_numpy(x).requires_grad_()
        labels_torch = torch.from_numpy(labels)

        def step():
            x_torch.grad = None
            loss_fn(labels_torch, x_torch).backward()

        return step
    raise ValueError(f"unknown framework {framework!r}: use one of {', '.join(FRAMEWORKS)}")


def _versions():
    versions = {"python": platform.python_version()}
    for name in ("numpy", "numba", "jax", "tensorflow", "torch", "keras", "tensorflow_addons"):
        module = sys.modules.get(name)
        if module is not None:
            versions[name] = getattr(module, "__version__", "?")
    return versions


def worker(framework, sizes, repeats, budget_s):
    """In a fresh process: per B, the NumPy call and the framework's step, round by round."""
    sys.path.insert(0, ROOT)
    import semihard_numba as sn
    from bench.data import benchmark_batch

    rows = []
    for B in sizes:
        labels, x = benchmark_batch(B)
        labels = labels.astype("int32")  # JAX without x64 holds int32; the same for every step
        steps = {"numpy": lambda: sn.triplet_semihard_loss_and_grad(labels, x)}
        if framework != BARE:
            steps[framework] = _framework_step(framework, labels, x)
        times = _rounds(steps, repeats, budget_s)
        numpy_ms, framework_ms = _ms(times["numpy"]), _ms(times[framework])
        rows.append(
            {
                "framework": framework,
                "B": B,
                "numpy_ms": numpy_ms,
                "framework_ms": framework_ms,
                "ratio": framework_ms / numpy_ms,
                "rounds": len(times["numpy"]),
            }
        )
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows, "versions": _versions()}


def tfa_worker(B, repeats, budget_s):
    """In a fresh process (TF 2.15 + TFA): tf.keras 2 training steps and the loss with its
    gradient, TFA's and ours, round by round."""
    sys.path.insert(0, ROOT)
    import numpy as np
    import tensorflow as tf
    import tensorflow_addons as tfa

    import semihard_numba.tensorflow as snt
    from bench.data import benchmark_batch

    labels, x = benchmark_batch(B)
    x_tf, labels_tf = tf.constant(x), tf.constant(labels)
    losses = {"tfa": tfa.losses.triplet_semihard_loss, "ours": snt.triplet_semihard_loss}
    steps = {}
    for name, loss in losses.items():
        tf.keras.utils.set_random_seed(0)
        model = tf.keras.Sequential([tf.keras.layers.Dense(128, input_shape=(128,))])
        model.compile(
            optimizer="sgd",
            loss=tfa.losses.TripletSemiHardLoss() if name == "tfa" else loss,
        )
        steps[f"{name} train step"] = lambda model=model: model.train_on_batch(x, labels)

        @tf.function
        def loss_and_grad(labels, x, loss=loss):
            with tf.GradientTape() as tape:
                tape.watch(x)
                value = loss(labels, x)
            return value, tape.gradient(value, x)

        steps[f"{name} loss+grad"] = lambda f=loss_and_grad: f(labels_tf, x_tf)[1].numpy()

    def value_and_grad(loss):
        with tf.GradientTape() as tape:
            tape.watch(x_tf)
            value = loss(labels_tf, x_tf)
        return value.numpy(), tape.gradient(value, x_tf).numpy()

    (tfa_value, tfa_grad), (our_value, our_grad) = map(value_and_grad, losses.values())
    agree = bool(np.isclose(tfa_value, our_value, rtol=1e-5, atol=1e-6))
    grad_diff = float(np.abs(tfa_grad - our_grad).max() / max(np.abs(tfa_grad).max(), 1e-30))
    times = _rounds(steps, repeats, budget_s)
    medians = {name: _ms(t) for name, t in times.items()}
    return {
        "B": B,
        "medians_ms": medians,
        "train_step_ratio": medians["tfa train step"] / medians["ours train step"],
        "loss_grad_ratio": medians["tfa loss+grad"] / medians["ours loss+grad"],
        "loss_agrees": agree,
        "grad_max_rel_diff": grad_diff,
        "rounds": len(times["tfa train step"]),
        "versions": _versions(),
    }


def _child(args, env=None):
    """Run this module with `args` in a fresh interpreter; its last stdout line is JSON."""
    run = subprocess.run(
        [sys.executable, "-m", "bench.frameworks", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        return {"error": run.stderr.strip().splitlines()[-1] if run.stderr.strip() else "failed"}
    return json.loads(run.stdout.strip().splitlines()[-1])


def _available_gib():
    with open("/proc/meminfo") as meminfo:
        for line in meminfo:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _machine():
    """bench.run's machine record (lscpu, memory, versions), with the load average."""
    from bench.run import machine

    info = machine()
    return {
        **info,
        "cpu": info.get("Model name", "?"),
        "cores": info["cpus"],
        "load": os.getloadavg(),
    }


def _write(out, name, result, table):
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, f"{name}.json"), "w") as f:
        json.dump(result, f, indent=1)
    with open(os.path.join(out, f"{name}.md"), "w") as f:
        f.write(table + "\n")
    print(f"\nwritten: {os.path.join(out, name)}.json and .md")


def run_frameworks(args):
    machine = _machine()
    print(f"{machine['cpu']}, {machine['cores']} cores; loss and gradient, D = 128, 4 per class")
    results = {}
    for framework in [BARE, *args.frameworks]:
        env = {}
        if framework.startswith("keras-"):
            env["KERAS_BACKEND"] = framework[len("keras-") :]
        sizes = [str(B) for B in args.sizes]
        results[framework] = _child(
            [
                "--worker",
                framework,
                "--sizes",
                *sizes,
                "--repeats",
                str(args.repeats),
                "--budget-s",
                str(args.budget_s),
            ],
            env,
        )
        print(
            f"{framework}: done"
            if "error" not in results[framework]
            else f"{framework}: {results[framework]['error']}",
            flush=True,
        )
    bare = {row["B"]: row["numpy_ms"] for row in results[BARE].get("rows", [])}
    lines = [
        "| framework | B | NumPy ms | framework ms | **framework / NumPy** | NumPy ms, no "
        "framework loaded | framework / that | rounds |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for framework, result in results.items():
        if framework == BARE:
            continue
        if "error" in result:
            lines.append(f"| {framework} | | | | not run: {result['error']} | | | |")
            continue
        for row in result["rows"]:
            alone = bare.get(row["B"], float("nan"))
            lines.append(
                f"| {framework} | {row['B']} | {row['numpy_ms']:.2f} | {row['framework_ms']:.2f} "
                f"| **{row['ratio']:.2f}** | {alone:.2f} | {row['framework_ms'] / alone:.2f} "
                f"| {row['rounds']} |"
            )
    table = "\n".join(lines)
    print("\n" + table)
    _write(
        args.out, "frameworks", {"machine": machine, "args": vars(args), "results": results}, table
    )


def run_tfa(args):
    machine = _machine()
    budget = args.max_mem_gib or 0.75 * _available_gib()
    print(f"{machine['cpu']}, {machine['cores']} cores; TFA against semihard_numba.tensorflow")
    results = []
    for B in args.sizes:
        need = TFA_BYTES_PER_B3 * B**3 / 2**30
        if need > budget:
            print(f"B = {B}: skipped, TFA needs ~{need:.0f} GiB, budget {budget:.0f} GiB")
            results.append({"B": B, "skipped": f"TFA needs ~{need:.0f} GiB > {budget:.0f} GiB"})
            continue
        results.append(
            _child(
                [
                    "--tfa-worker",
                    str(B),
                    "--repeats",
                    str(args.repeats),
                    "--budget-s",
                    str(args.budget_s),
                ]
            )
        )
        print(f"B = {B}: done", flush=True)
    lines = [
        "| B | TFA train step ms | ours train step ms | TFA / ours | TFA loss+grad ms "
        "| ours loss+grad ms | TFA / ours | loss agrees | grad max rel diff |",
        "|---:|---:|---:|---:|---:|---:|---:|---|---:|",
    ]
    for r in results:
        if "medians_ms" not in r:
            lines.append(f"| {r.get('B', '?')} | {r.get('skipped') or r.get('error')} |")
            continue
        m = r["medians_ms"]
        lines.append(
            f"| {r['B']} | {m['tfa train step']:.2f} | {m['ours train step']:.2f} "
            f"| {r['train_step_ratio']:.1f} | {m['tfa loss+grad']:.2f} | {m['ours loss+grad']:.2f}"
            f" | {r['loss_grad_ratio']:.1f} | {r['loss_agrees']} | {r['grad_max_rel_diff']:.1e} |"
        )
    table = "\n".join(lines)
    print("\n" + table)
    _write(
        args.out,
        "frameworks-tfa",
        {"machine": machine, "args": vars(args), "results": results},
        table,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frameworks", nargs="+", default=list(FRAMEWORKS), choices=FRAMEWORKS)
    parser.add_argument("--sizes", nargs="+", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=21, help="rounds per size, at most")
    parser.add_argument("--budget-s", type=float, default=20.0, help="seconds per size, about")
    parser.add_argument("--tfa", action="store_true", help="TFA side by side (TF 2.15 + TFA)")
    parser.add_argument("--max-mem-gib", type=float, default=None, help="--tfa: memory budget")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--tfa-worker", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.sizes, args.repeats, args.budget_s)))
    elif args.tfa_worker:
        print(json.dumps(tfa_worker(args.tfa_worker, args.repeats, args.budget_s)))
    elif args.tfa:
        args.sizes = args.sizes or [256, 512, 1024]
        run_tfa(args)
    else:
        args.sizes = args.sizes or [256, 1024, 4096]
        run_frameworks(args)


if __name__ == "__main__":
    main()

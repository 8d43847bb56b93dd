"""Train a small Keras embedding of scikit-learn's digits with TripletSemiHardLoss, on any Keras
3 backend:

    pip install "semihard-numba[keras,examples]" jax    # or tensorflow, or torch
    KERAS_BACKEND=jax python examples/train_keras.py     # or tensorflow, or torch

The model is two Dense layers (64 pixels -> 64 -> --dim) and a unit-length normalisation, compiled
with compile's default arguments and ``loss=TripletSemiHardLoss()``, the one line that changes
from TensorFlow Addons. Each epoch fits a fresh set of P x K batches (P digit classes, K images of
each, so every anchor has positives). Printed: the held-out loss (all held-out digits as one
batch) and the 1-nearest-neighbour accuracy of held-out digits against the training digits,
before, after each epoch and after; with matplotlib installed a PNG shows the loss curve and a 2-D
view of the held-out embedding.
"""

import argparse
import time
from dataclasses import dataclass, field

import keras
import numpy as np
from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
from sklearn.model_selection import train_test_split

from semihard_numba.keras import TripletSemiHardLoss


@dataclass
class Result:
    initial_loss: float  # triplet loss of the held-out digits (one batch of all of them)
    final_loss: float
    initial_accuracy: float  # 1-NN accuracy of held-out digits against the training digits
    final_accuracy: float
    batch_losses: list = field(default_factory=list)  # the loss of every training batch


def nn_accuracy(E_test, y_test, E_train, y_train):
    """Fraction of test points whose nearest training point (Euclidean) has the same label."""
    d2 = (E_test**2).sum(1)[:, None] - 2 * E_test @ E_train.T + (E_train**2).sum(1)[None, :]
    return float(np.mean(y_train[np.argmin(d2, axis=1)] == y_test))


def pk_batches(rng, y, batches, classes, per_class):
    """Indices of `batches` P x K batches in a row: `classes` random labels, `per_class` random
    images of each."""
    out = []
    for _ in range(batches):
        chosen = rng.choice(np.unique(y), size=classes, replace=False)
        out += [rng.choice(np.flatnonzero(y == c), size=per_class, replace=False) for c in chosen]
    return np.concatenate(out)


class BatchLosses(keras.callbacks.Callback):
    """Each batch's own loss (Keras logs the running mean of the epoch)."""

    def __init__(self):
        super().__init__()
        self.losses, self._seen = [], 0

    def on_epoch_begin(self, epoch, logs=None):
        self._seen = 0

    def on_train_batch_end(self, batch, logs=None):
        mean = float(logs["loss"])  # the mean over batches 0 .. batch of this epoch
        self.losses.append(mean * (batch + 1) - self._seen)
        self._seen = mean * (batch + 1)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=60, help="P x K batches per epoch")
    parser.add_argument("--batch-classes", type=int, default=8, help="P: classes per batch (<= 10)")
    parser.add_argument("--per-class", type=int, default=8, help="K: images of each class")
    parser.add_argument("--dim", type=int, default=16, help="embedding dimension")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="train_keras.png", help="where to save the figure")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the figure")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    keras.utils.set_random_seed(args.seed)

    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.data.astype("float32") / 16.0,
        digits.target,
        test_size=0.25,
        random_state=args.seed,
        stratify=digits.target,
    )

    model = keras.Sequential(
        [
            keras.Input((X_train.shape[1],)),
            keras.layers.Dense(64, activation="relu"),
            keras.layers.Dense(args.dim),
            keras.layers.UnitNormalization(),  # distances in [0, 2]: margin 1 keeps its meaning
        ]
    )
    model.compile(optimizer="adam", loss=TripletSemiHardLoss())  # as with tfa.losses

    def evaluate():
        loss = model.evaluate(X_test, y_test, batch_size=len(X_test), verbose=0)
        E_test = model.predict(X_test, batch_size=256, verbose=0)
        E_train = model.predict(X_train, batch_size=256, verbose=0)
        return float(loss), nn_accuracy(E_test, y_test, E_train, y_train)

    print(f"Keras {keras.__version__}, backend {keras.backend.backend()}")
    initial_loss, initial_accuracy = evaluate()
    print(f"before:   held-out loss {initial_loss:.4f}, 1-NN accuracy {initial_accuracy:.4f}")
    batch_size = args.batch_classes * args.per_class
    recorder, start = BatchLosses(), time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        idx = pk_batches(rng, y_train, args.steps, args.batch_classes, args.per_class)
        history = model.fit(
            X_train[idx],
            y_train[idx],
            batch_size=batch_size,
            shuffle=False,  # keep the P x K batches whole
            callbacks=[recorder],
            verbose=0,
        )
        loss, accuracy = evaluate()
        print(
            f"epoch {epoch:3d}: training loss {history.history['loss'][-1]:.4f}, held-out loss "
            f"{loss:.4f}, 1-NN accuracy {accuracy:.4f}"
        )
    print(f"{args.epochs * args.steps} steps in {time.perf_counter() - start:.2f} s")
    final_loss, final_accuracy = evaluate()
    print(f"after:    held-out loss {final_loss:.4f}, 1-NN accuracy {final_accuracy:.4f}")
    if not args.no_plot:
        plot(args.out, recorder.losses, model.predict(X_test, verbose=0), y_test)
    return Result(initial_loss, final_loss, initial_accuracy, final_accuracy, recorder.losses)


def plot(path, batch_losses, E_test, y_test):
    """Loss curve, and the held-out embedding projected on its first two principal axes."""
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no figure (pip install matplotlib)")
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_emb) = plt.subplots(1, 2, figsize=(11, 4.5))
    ax_loss.plot(batch_losses, lw=0.6, alpha=0.4, label="batch")
    window = max(1, len(batch_losses) // 20)
    if len(batch_losses) >= window:
        smooth = np.convolve(batch_losses, np.ones(window) / window, mode="valid")
        ax_loss.plot(np.arange(window - 1, len(batch_losses)), smooth, label=f"mean of {window}")
    ax_loss.set(
        xlabel="step",
        ylabel="semi-hard triplet loss",
        title=f"training loss (Keras, {keras.backend.backend()} backend)",
    )
    ax_loss.legend()
    centred = E_test - E_test.mean(0)
    xy = centred @ np.linalg.svd(centred, full_matrices=False)[2][:2].T  # PCA via SVD
    points = ax_emb.scatter(xy[:, 0], xy[:, 1], c=y_test, cmap="tab10", s=10, vmin=-0.5, vmax=9.5)
    fig.colorbar(points, ax=ax_emb, ticks=range(10), label="digit")
    ax_emb.set(title="held-out digits, embedding PCA", xlabel="PC 1", ylabel="PC 2")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"figure saved to {path}")


if __name__ == "__main__":
    main()

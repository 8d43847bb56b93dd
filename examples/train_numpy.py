"""Learn a linear embedding of scikit-learn's digits with the semi-hard triplet loss, in NumPy.

    pip install "semihard-numba[examples]"
    python examples/train_numpy.py --steps 300

The model is one matrix W (64 pixels -> --dim); the embedding of a digit is x W scaled to unit
length. Each step draws a P x K batch (P digit classes, K images of each, so every anchor has
positives), asks semihard_numba for the loss and its gradient with respect to the embeddings, and
carries that gradient back to W by hand. The 1-nearest-neighbour accuracy of held-out digits
(matched against the training digits in embedding space) is printed before and after, and with
matplotlib installed a PNG shows the loss curve and a 2-D view of the held-out embedding.
"""

import argparse
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.datasets import load_digits  # bundled with scikit-learn: no download
from sklearn.model_selection import train_test_split

import semihard_numba


@dataclass
class Result:
    initial_loss: float  # mean triplet loss of the held-out digits (one batch of all of them)
    final_loss: float
    initial_accuracy: float  # 1-NN accuracy of held-out digits against the training digits
    final_accuracy: float
    batch_losses: list = field(default_factory=list)  # the training loss at every step


def embed(X, W):
    """Unit-length embeddings x W / |x W|, and the norms needed for the backward pass.

    Why normalise: on raw x W the loss also falls by merely growing W (distances grow, the
    margin stays), so the printed loss overstates the learning. Measured at 300 steps: raw x W
    ends at 1-NN 0.98 (vs 0.96 here) but with its mean norm grown from 3.6 to 10. On the unit
    sphere distances stay in [0, 2], margin 1.0 keeps its meaning, and a lower loss is a better
    embedding."""
    Z = X @ W
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / norms, norms


def grad_W(X, E, norms, grad_E):
    """Chain rule from d loss / d embeddings to d loss / d W through the normalisation:
    for e = z / |z|, d e / d z applied to g is (g - e (e . g)) / |z|; and z = x W."""
    grad_Z = (grad_E - E * np.sum(E * grad_E, axis=1, keepdims=True)) / norms
    return X.T @ grad_Z


def nn_accuracy(E_test, y_test, E_train, y_train):
    """Fraction of test points whose nearest training point (Euclidean) has the same label."""
    d2 = (E_test**2).sum(1)[:, None] - 2 * E_test @ E_train.T + (E_train**2).sum(1)[None, :]
    return float(np.mean(y_train[np.argmin(d2, axis=1)] == y_test))


def sample_batch(rng, y, classes, per_class):
    """Indices of a P x K batch: `classes` random labels, `per_class` random images of each."""
    chosen = rng.choice(np.unique(y), size=classes, replace=False)
    return np.concatenate(
        [rng.choice(np.flatnonzero(y == c), size=per_class, replace=False) for c in chosen]
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-classes", type=int, default=8, help="P: classes per batch (<= 10)")
    parser.add_argument("--per-class", type=int, default=8, help="K: images of each class")
    parser.add_argument("--dim", type=int, default=16, help="embedding dimension")
    parser.add_argument("--lr", type=float, default=0.01, help="Adam step size")
    parser.add_argument("--margin", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backend", default="auto", help="semihard_numba backend")
    parser.add_argument("--out", default="train_numpy.png", help="where to save the figure")
    parser.add_argument("--no-plot", action="store_true", help="do not draw the figure")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)

    digits = load_digits()
    X_train, X_test, y_train, y_test = train_test_split(
        digits.data, digits.target, test_size=0.25, random_state=args.seed, stratify=digits.target
    )
    mean, std = X_train.mean(0), X_train.std(0)
    std[std == 0] = 1.0  # pixels that are constant in the training digits (a few border ones)
    X_train, X_test = (X_train - mean) / std, (X_test - mean) / std

    def evaluate(W):
        E_test, E_train = embed(X_test, W)[0], embed(X_train, W)[0]
        loss = semihard_numba.triplet_semihard_loss(
            y_test, E_test, args.margin, backend=args.backend
        )
        return float(loss), nn_accuracy(E_test, y_test, E_train, y_train)

    W = rng.normal(0.0, 1.0 / np.sqrt(X_train.shape[1]), (X_train.shape[1], args.dim))
    initial_loss, initial_accuracy = evaluate(W)
    print(f"before: held-out loss {initial_loss:.4f}, 1-NN accuracy {initial_accuracy:.4f}")

    # Adam, written out: plain SGD needs far more steps on this loss.
    m, v, beta1, beta2 = np.zeros_like(W), np.zeros_like(W), 0.9, 0.999
    batch_losses, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        idx = sample_batch(rng, y_train, args.batch_classes, args.per_class)
        E, norms = embed(X_train[idx], W)
        loss, grad_E = semihard_numba.triplet_semihard_loss_and_grad(
            y_train[idx], E, args.margin, backend=args.backend
        )
        g = grad_W(X_train[idx], E, norms, grad_E)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        W -= args.lr * (m / (1 - beta1**step)) / (np.sqrt(v / (1 - beta2**step)) + 1e-8)
        batch_losses.append(float(loss))
        if step == 1 or step % max(1, args.steps // 10) == 0 or step == args.steps:
            recent = np.mean(batch_losses[-max(1, args.steps // 10) :])
            print(f"step {step:5d}  batch loss {loss:.4f}  (recent mean {recent:.4f})")
    print(f"{args.steps} steps in {time.perf_counter() - start:.2f} s")

    final_loss, final_accuracy = evaluate(W)
    print(f"after:  held-out loss {final_loss:.4f}, 1-NN accuracy {final_accuracy:.4f}")
    if not args.no_plot:
        plot(args.out, batch_losses, embed(X_test, W)[0], y_test)
    return Result(initial_loss, final_loss, initial_accuracy, final_accuracy, batch_losses)


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
    ax_loss.set(xlabel="step", ylabel="semi-hard triplet loss", title="training loss")
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

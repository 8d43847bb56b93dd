"""Access to the golden cases in tests/data (see tests/data/README.md): TensorFlow Addons' own
triplet_semihard_loss and triplet_hard_loss, sentence-transformers' batch-all and
pytorch-metric-learning's semi-hard miner with its triplet loss."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DATA = Path(__file__).parent / "data"
TFA_PATH = DATA / "tfa_triplet_golden.npz"
VARIANTS_PATH = DATA / "variants_golden.npz"

# Where we deliberately differ from the references, and test against something else instead:
# - the semi-hard loss's exact tie with the row's farthest point, where TF's offset masked minimum
#   leaks gradient to that point; we give the natural subgradient (tests/test_gradient.py);
TF_TIE_LEAK_CASE = 171
# - triplet_hard_loss(soft=True) on large coordinates: TF's float32 log1p(exp(z)) overflows to inf
#   (and its gradient to NaN); ours stays finite, checked against a float64 softplus;
TF_SOFTPLUS_OVERFLOW_CASES = {131, 149}
# - one gradient entry of batch-all case 46 (about 1.8e-6, the sum of many contributions that
#   cancel) on which PyTorch's float32 accumulation is 1e-3 off; checked against float64.
TORCH_ROUNDING_CASES = {46}


@dataclass(frozen=True)
class GoldenCase:
    case: int
    function: str  # triplet_semihard_loss, triplet_hard_loss, st_batch_all, pml_semihard
    kind: str
    metric: str
    margin: float
    soft: bool
    labels: np.ndarray
    embeddings: np.ndarray
    loss: np.float32  # NaN where TFA divides 0 by 0, inf where its softplus overflows
    grad: np.ndarray
    count: int  # the variants: how many triplets the mean divides by (-1 for TFA's cases)

    def __repr__(self):
        soft = "-soft" if self.soft else ""
        return f"case{self.case}-{self.kind}-{self.metric}{soft}-B{len(self.labels)}"


def _cases(path, function):
    with np.load(path) as z:
        manifest = json.loads(str(z["manifest"]))
        return [
            GoldenCase(
                case=e["case"],
                function=e["function"],
                kind=e["kind"],
                metric=e["metric"],
                margin=e["margin"],
                soft=bool(e.get("soft", False)),
                labels=z[f"c{e['case']}_labels"],
                embeddings=z[f"c{e['case']}_embeddings"],
                loss=z[f"c{e['case']}_loss"],
                grad=z[f"c{e['case']}_grad"],
                count=int(z[f"c{e['case']}_count"]) if f"c{e['case']}_count" in z else -1,
            )
            for e in manifest
            if e["function"] == function
        ]


def semihard_cases():
    return _cases(TFA_PATH, "triplet_semihard_loss")


def hard_cases():
    return _cases(TFA_PATH, "triplet_hard_loss")


def batch_all_cases():
    return _cases(VARIANTS_PATH, "st_batch_all")


def all_semihard_cases():
    return _cases(VARIANTS_PATH, "pml_semihard")

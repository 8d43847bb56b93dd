"""Access to the TensorFlow Addons golden cases in tests/data (see tests/data/README.md)."""

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PATH = Path(__file__).parent / "data" / "tfa_triplet_golden.npz"

# The one case where we deliberately give the natural subgradient instead of TF's: the chosen
# negative ties with the row's farthest point and TF's offset masked minimum leaks gradient to it.
TF_TIE_LEAK_CASE = 171


@dataclass(frozen=True)
class GoldenCase:
    case: int
    kind: str
    metric: str
    margin: float
    labels: np.ndarray
    embeddings: np.ndarray
    loss: np.float32  # NaN where TFA divides 0 by 0
    grad: np.ndarray

    def __repr__(self):
        return f"case{self.case}-{self.kind}-{self.metric}-B{len(self.labels)}"


def semihard_cases():
    with np.load(PATH) as z:
        manifest = json.loads(str(z["manifest"]))
        return [
            GoldenCase(
                case=e["case"],
                kind=e["kind"],
                metric=e["metric"],
                margin=e["margin"],
                labels=z[f"c{e['case']}_labels"],
                embeddings=z[f"c{e['case']}_embeddings"],
                loss=z[f"c{e['case']}_loss"],
                grad=z[f"c{e['case']}_grad"],
            )
            for e in manifest
            if e["function"] == "triplet_semihard_loss"
        ]

"""Exact, framework-free semi-hard triplet loss (TensorFlow Addons semantics), NumPy in, NumPy out."""

from ._api import mine_semihard, triplet_semihard_loss, triplet_semihard_loss_and_grad
from ._dispatch import backends
from ._mining import MiningResult

__version__ = "0.1.0"
__all__ = [
    "MiningResult",
    "backends",
    "mine_semihard",
    "triplet_semihard_loss",
    "triplet_semihard_loss_and_grad",
]

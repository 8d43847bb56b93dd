"""Exact, framework-free triplet losses (TensorFlow Addons semantics and the other standard
rules), NumPy in, NumPy out, compiled by Numba for the CPU and for NVIDIA GPUs."""

from ._api import (
    mine_semihard,
    triplet_all_semihard_loss,
    triplet_all_semihard_loss_and_grad,
    triplet_batch_all_loss,
    triplet_batch_all_loss_and_grad,
    triplet_hard_loss,
    triplet_hard_loss_and_grad,
    triplet_semihard_loss,
    triplet_semihard_loss_and_grad,
)
from ._dispatch import backends
from ._mining import MiningResult
from ._rules import TripletStats

__version__ = "0.1.0"
__all__ = [
    "MiningResult",
    "TripletStats",
    "backends",
    "mine_semihard",
    "triplet_all_semihard_loss",
    "triplet_all_semihard_loss_and_grad",
    "triplet_batch_all_loss",
    "triplet_batch_all_loss_and_grad",
    "triplet_hard_loss",
    "triplet_hard_loss_and_grad",
    "triplet_semihard_loss",
    "triplet_semihard_loss_and_grad",
]

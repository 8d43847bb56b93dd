"""What each process of tests/test_torch.py's distributed tests runs (torch.multiprocessing
spawns them, so this lives in an importable module). Every check is an assertion inside the
worker: a failing rank fails the spawning test with its traceback."""

import os

import numpy as np
import torch
import torch.distributed as dist

import semihard_numba as sn
from semihard_numba.torch import TripletLoss

RULES = ["semihard", "hard", "batch-all", "all-semihard"]
FUNCTIONS = {
    "semihard": sn.triplet_semihard_loss_and_grad,
    "hard": sn.triplet_hard_loss_and_grad,
    "batch-all": sn.triplet_batch_all_loss_and_grad,
    "all-semihard": sn.triplet_all_semihard_loss_and_grad,
}


def _start(rank, world, address):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=address, rank=rank, world_size=world)


def _finish():
    """Leave without running the interpreter's teardown: with torch 2.13, a process spawned by
    torch.multiprocessing that used DistributedDataParallel on gloo aborts at exit ("terminate
    called without an active exception") in about one run of four, in a script of torch alone as
    well. Every check has passed by now; an exception above still fails the test."""
    dist.destroy_process_group()
    os._exit(0)


def global_batch(sizes, seed=0, D=6):
    """The global batch of the tests, float64, and the rows of each rank."""
    rng = np.random.default_rng(seed)
    B = sum(sizes)
    labels = rng.integers(0, 3, B)
    x = rng.normal(size=(B, D))
    bounds = np.cumsum([0, *sizes])
    return labels, x, [slice(bounds[r], bounds[r + 1]) for r in range(len(sizes))]


def loss_and_rows(rank, world, address, sizes):
    """Per rule and metric: every rank's loss is the global loss, and its rows' gradient is W
    times (ranks_average_gradients=True) or exactly (False) its rows of the global gradient."""
    _start(rank, world, address)
    labels, x, rows = global_batch(sizes)
    mine = rows[rank]
    for rule in RULES:
        for metric in ("L2", "squared-L2", "angular"):
            want_loss, want_grad = FUNCTIONS[rule](labels, x, distance_metric=metric)
            for average, factor in ((True, world), (False, 1)):
                module = TripletLoss(
                    rule,
                    distance_metric=metric,
                    gather_across_processes=True,
                    ranks_average_gradients=average,
                )
                local = torch.tensor(x[mine], requires_grad=True)
                loss = module(torch.tensor(labels[mine]), local)
                loss.backward()
                where = f"rank {rank}, {rule}, {metric}, average={average}"
                np.testing.assert_allclose(
                    loss.item(), want_loss, rtol=1e-6, atol=1e-9, err_msg=where
                )
                np.testing.assert_allclose(
                    local.grad.numpy(),
                    factor * want_grad[mine],
                    rtol=1e-6,
                    atol=1e-9,
                    err_msg=where,
                )
    _finish()


def ddp_parameters(rank, world, address, sizes):
    """A linear embedding under DistributedDataParallel: the averaged parameter gradients equal
    those of one process on the global batch (no factor to apply by the user)."""
    _start(rank, world, address)
    labels, inputs, rows = global_batch(sizes, seed=1, D=5)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 4).double()
    single = torch.nn.Linear(5, 4).double()
    single.load_state_dict(model.state_dict())
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    for rule in RULES:
        ddp.zero_grad()
        single.zero_grad()
        module = TripletLoss(rule, gather_across_processes=True)
        loss = module(torch.tensor(labels[rows[rank]]), ddp(torch.tensor(inputs[rows[rank]])))
        loss.backward()
        want = TripletLoss(rule)(torch.tensor(labels), single(torch.tensor(inputs)))
        want.backward()
        np.testing.assert_allclose(loss.item(), want.item(), rtol=1e-9)
        for got, expected in zip(model.parameters(), single.parameters()):
            np.testing.assert_allclose(
                got.grad.numpy(), expected.grad.numpy(), rtol=1e-6, atol=1e-9, err_msg=rule
            )
    _finish()


def inconsistent_input(rank, world, address, bad_rank):
    """One rank with a wrong input: every rank raises the same ValueError, none hangs."""
    _start(rank, world, address)
    labels, x, rows = global_batch([4] * world)
    local_labels, local = torch.tensor(labels[rows[rank]]), torch.tensor(x[rows[rank]])
    messages = {}
    bad = {
        "count": (local_labels[:-1], local),
        "D": (local_labels, local[:, :-1]),
        "dtype": (local_labels, local.float()),
    }
    for name, (bad_labels, bad_embeddings) in bad.items():
        module = TripletLoss("semihard", gather_across_processes=True)
        args = (bad_labels, bad_embeddings) if rank == bad_rank else (local_labels, local)
        try:
            module(*args)
        except ValueError as error:
            messages[name] = str(error)
        else:
            raise AssertionError(f"rank {rank}: no error for a wrong {name} on rank {bad_rank}")
    assert f"rank {bad_rank}: 3 labels for 4 embeddings" in messages["count"], messages
    assert "disagree on D" in messages["D"], messages
    assert "disagree on embeddings dtype" in messages["dtype"], messages
    # the group still works afterwards: nobody was left inside a collective
    module = TripletLoss("semihard", gather_across_processes=True)
    module(local_labels, local)
    _finish()

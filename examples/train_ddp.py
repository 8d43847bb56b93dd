"""Train an embedding with the semi-hard triplet loss across processes (DistributedDataParallel).

    pip install "semihard-numba[torch]"
    torchrun --standalone --nproc_per_node 2 examples/train_ddp.py --steps 100

Each process draws its own batch of points from 16 Gaussian classes in 32 dimensions and embeds
it with a small MLP wrapped in DistributedDataParallel. The loss gathers every process's
embeddings, so each process's anchors are mined against the whole global batch, and every process
gets the loss of that global batch. DDP averages the parameter gradients over the processes; the
loss module has already multiplied its gradient by the number of processes, so the averaged
gradients are those of one process on the global batch: there is nothing to rescale here.

On GPUs the same script runs with NCCL (one GPU per process, chosen by LOCAL_RANK), on one machine
or many: torchrun's rendezvous, e.g. on each of two machines
    torchrun --nnodes 2 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint HOST:29500 \\
        examples/train_ddp.py
"""

import argparse
import os

import torch
import torch.distributed as dist

from semihard_numba.torch import TripletSemiHardLoss


def draw(generator, centers, classes_per_batch, per_class, device):
    """A P x K batch: P classes, K points of each (so every anchor has positives)."""
    chosen = torch.randperm(centers.shape[0], generator=generator)[:classes_per_batch]
    labels = chosen.repeat_interleave(per_class)
    points = centers[labels] + torch.randn(labels.shape[0], centers.shape[1], generator=generator)
    return labels.to(device), points.to(device)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--classes-per-batch", type=int, default=8)
    parser.add_argument("--per-class", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.05)
    args = parser.parse_args(argv)

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")  # torchrun sets rank, world and address
    rank, world = dist.get_rank(), dist.get_world_size()
    device = torch.device(f"cuda:{os.environ.get('LOCAL_RANK', 0)}" if cuda else "cpu")

    shared = torch.Generator().manual_seed(0)  # the same classes and model on every rank
    centers = 3 * torch.randn(16, 32, generator=shared)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8)
    ).to(device)
    model = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device] if cuda else None)
    loss_fn = TripletSemiHardLoss(margin=1.0, gather_across_processes=True)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr)

    own = torch.Generator().manual_seed(1 + rank)  # each rank its own batches
    held_out = draw(torch.Generator().manual_seed(99), centers, 16, 8, device)
    with torch.no_grad():
        before = loss_fn(held_out[0], model(held_out[1])).item()
    for step in range(args.steps):
        labels, points = draw(own, centers, args.classes_per_batch, args.per_class, device)
        loss = loss_fn(labels, model(points))  # the global batch's loss, on every rank
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if rank == 0 and (step % 20 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  global batch of {world} x {labels.shape[0]}  loss {loss:.4f}")
    with torch.no_grad():
        after = loss_fn(held_out[0], model(held_out[1])).item()
    if rank == 0:
        print(f"held-out loss: before {before:.4f}, after {after:.4f}")
    dist.destroy_process_group()
    return before, after


if __name__ == "__main__":
    main()

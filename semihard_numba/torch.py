"""PyTorch modules for the triplet losses (optional: ``pip install "semihard-numba[torch]"``).

    loss_fn = semihard_numba.torch.TripletSemiHardLoss(margin=1.0)
    loss = loss_fn(labels, embeddings)  # (labels, embeddings): TFA's (y_true, y_pred) order
    loss.backward()

Mind the order: the arguments are (labels, embeddings), as in TFA and the rest of this library;
pytorch-metric-learning's losses take (embeddings, labels).

The forward pass computes the loss and its gradient at once with the NumPy/Numba backends; the
backward pass only scales the stored gradient. CPU tensors are handed to NumPy without a copy;
CUDA tensors go to the "cuda" backend through ``__cuda_array_interface__`` and their gradient
stays on the device. float16 and bfloat16 are computed in float32 and returned in their own dtype.

Across processes (``gather_across_processes=True``, on torch.distributed): every rank's
embeddings are all-gathered with their gradient, each rank's rows act as anchors against the
whole global batch, and the ranks' sums and denominators are all-reduced, so every rank gets the
loss of the global batch. See `TripletLoss` for the gradient convention under
DistributedDataParallel.
"""

try:
    import torch
    import torch.distributed as dist
except ImportError as error:
    from ._frameworks import missing

    raise missing("torch", "PyTorch", "torch") from error

from . import _api
from ._rules import ALL_SEMIHARD, BATCH_ALL, HARD, SEMIHARD, Rule

__all__ = [
    "TripletAllSemiHardLoss",
    "TripletBatchAllLoss",
    "TripletHardLoss",
    "TripletLoss",
    "TripletSemiHardLoss",
]

_HALF = (torch.float16, torch.bfloat16)  # no NumPy dtype for bfloat16: both computed in float32


def _for_backend(tensor):
    """What the NumPy/Numba functions receive for a tensor: a view of the same memory (NumPy for
    CPU tensors; a CUDA tensor is itself a ``__cuda_array_interface__`` array)."""
    tensor = tensor.detach()
    return tensor.numpy() if tensor.device.type == "cpu" else tensor


class _TripletSum(torch.autograd.Function):
    """The sum of a rule's triplet losses over the anchors, with the gradient of that sum
    computed in the same pass; the second output is the rule's denominator (no gradient)."""

    @staticmethod
    def forward(ctx, embeddings, labels, rule, anchors, options, want_grad):
        compute = embeddings.detach()
        if compute.dtype in _HALF:
            compute = compute.float()
        loss, loss_and_grad = _api.RULE_FUNCTIONS[rule.name]
        args = (_for_backend(labels), _for_backend(compute))
        kwargs = dict(options, anchors=anchors, reduction="sum", return_stats=True)
        if rule.name == HARD:
            kwargs["soft"] = rule.soft
        if want_grad:
            total, grad, stats = loss_and_grad(*args, **kwargs)
            ctx.save_for_backward(torch.as_tensor(grad, device=embeddings.device))  # no copy
            ctx.input_dtype = embeddings.dtype
        else:
            total, stats = loss(*args, **kwargs)
        denominator = torch.tensor(float(stats.denominator), dtype=torch.float64)
        ctx.mark_non_differentiable(denominator)
        # in the computation's precision: the caller scales it, then casts half precision back
        total = torch.tensor(float(total), dtype=compute.dtype, device=embeddings.device)
        return total, denominator.to(embeddings.device)

    @staticmethod
    def backward(ctx, grad_total, _grad_denominator):
        (grad,) = ctx.saved_tensors
        return (grad * grad_total).to(ctx.input_dtype), None, None, None, None, None


class _AllGather(torch.autograd.Function):
    """Every rank's (equally padded) rows, concatenated in rank order. The backward sums the
    ranks' gradients of the whole (an all-reduce) and keeps this rank's rows: each row's gradient
    goes back to its owner. Like any collective, every rank must run the backward pass."""

    @staticmethod
    def forward(ctx, padded, group):
        parts = [torch.empty_like(padded) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, padded.contiguous(), group=group)
        ctx.group, ctx.rows = group, padded.shape[0]
        ctx.start = dist.get_rank(group) * padded.shape[0]
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, group=ctx.group)
        return grad[ctx.start : ctx.start + ctx.rows], None


def _gather(labels, embeddings, group):
    """The global batch, in rank order, and this rank's rows in it (a slice). The embeddings
    keep their gradient through `_AllGather`."""
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError(
            "gather_across_processes=True needs an initialised torch.distributed process group: "
            "call torch.distributed.init_process_group first (torchrun sets up its environment)"
        )
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    sizes = _check_ranks_agree(labels, embeddings, world, group)
    rows = max(sizes)
    padding = rows - embeddings.shape[0]
    padded = torch.nn.functional.pad(embeddings, (0, 0, 0, padding))
    padded_labels = torch.nn.functional.pad(labels.reshape(-1), (0, padding))
    gathered = _AllGather.apply(padded, group)
    gathered_labels = [torch.empty_like(padded_labels) for _ in range(world)]
    dist.all_gather(gathered_labels, padded_labels, group=group)
    # which of the padded rows hold data: the padding carries no label value, only this mask
    valid = torch.arange(rows, device=embeddings.device) < torch.tensor(
        sizes, device=embeddings.device
    ).reshape(-1, 1)
    offset = sum(sizes[:rank])
    mine = slice(offset, offset + sizes[rank])
    return torch.cat(gathered_labels)[valid.reshape(-1)], gathered[valid.reshape(-1)], mine


_DTYPES = [
    torch.float16,
    torch.bfloat16,
    torch.float32,
    torch.float64,
    torch.int8,
    torch.uint8,
    torch.int16,
    torch.int32,
    torch.int64,
]


def _check_ranks_agree(labels, embeddings, world, group):
    """The first collective: every rank's (label count, row count, D, dtypes), so that input
    that is wrong on one rank makes all ranks raise the same error instead of leaving the others
    waiting in the next collective. Returns the ranks' row counts."""

    def dtype_code(dtype):
        return _DTYPES.index(dtype) if dtype in _DTYPES else -1

    D = embeddings.shape[1] if embeddings.ndim == 2 else -1
    header = [labels.numel(), embeddings.shape[0] if embeddings.ndim else -1, D, embeddings.ndim]
    header += [dtype_code(embeddings.dtype), dtype_code(labels.dtype)]
    header = torch.tensor(header, dtype=torch.int64, device=embeddings.device)
    headers = [torch.empty_like(header) for _ in range(world)]
    dist.all_gather(headers, header, group=group)
    table = torch.stack(headers).cpu().tolist()
    problems = []
    for rank, (n_labels, n_rows, D, ndim, dtype, label_dtype) in enumerate(table):
        if ndim != 2:
            problems.append(f"rank {rank}: embeddings are {ndim}-D, expected (B, D)")
        elif n_labels != n_rows:
            problems.append(f"rank {rank}: {n_labels} labels for {n_rows} embeddings")
        if -1 in (dtype, label_dtype):
            problems.append(f"rank {rank}: unsupported embeddings or labels dtype")
    for name, column in (("D", 2), ("embeddings dtype", 4), ("labels dtype", 5)):
        values = {row[column] for row in table}
        if len(values) > 1:
            shown = [row[column] if column == 2 else _DTYPES[row[column]] for row in table]
            problems.append(f"the ranks disagree on {name}: {shown}")
    if problems:
        raise ValueError("gather_across_processes: " + "; ".join(problems))
    return [row[1] for row in table]


class TripletLoss(torch.nn.Module):
    """A triplet loss of `rule` as a module: ``loss_fn(labels, embeddings)``.

    Parameters
    ----------
    rule : {"semihard", "hard", "batch-all", "all-semihard"}
        The rule of `semihard_numba.triplet_semihard_loss` and its siblings (the subclasses fix it).
    margin : float, default 1.0
    distance_metric : {"L2", "squared-L2", "angular"}, default "L2"
    soft : bool, default False
        "hard" only: the soft-margin form log1p(exp(hp - hn)).
    reduction : {"mean", "sum"}, default "mean"
        "mean" divides by the rule's denominator (over the global batch when gathering).
    backend : str, default "auto"
        As the NumPy functions: CUDA tensors go to "cuda", CPU tensors to "cpu".
    gather_across_processes : bool, default False
        Mine each rank's rows as anchors against the embeddings of every rank of `process_group`
        (torch.distributed must be initialised). Every rank gets the loss of the global batch,
        equal to the loss of one process on all ranks' rows concatenated in rank order. Local
        batches may differ in size; inconsistent input on one rank makes every rank raise.
    process_group : torch.distributed.ProcessGroup, optional
        The group to gather over (default: the world).
    ranks_average_gradients : bool, default True
        With gather_across_processes: DistributedDataParallel (and FSDP) average the parameter
        gradients over the W ranks, so the loss's gradient is multiplied by W, and the averaged
        parameter gradients equal the gradients of a single process on the global batch. You do
        not multiply the loss by W (pytorch-metric-learning's DistributedLossWrapper does the same
        inside). Pass False if you sum the ranks' gradients yourself: the gradient is then the
        local part of the global loss's gradient. The loss value is the global loss either way.

    Call
    ----
    loss_fn(labels, embeddings, ref_labels=None, ref_embeddings=None)
        labels: integer tensor (B,) or (B, 1), any integer dtype; embeddings: (B, D) float tensor.
        ref_embeddings (R, D) and ref_labels (R,): a cross-batch memory. The reference rows are
        detached and join the batch's rows as candidate positives and negatives; only the batch
        rows act as anchors, and the batch's own rows stay candidates. (pytorch-metric-learning's
        ``ref_emb`` replaces the batch as the candidate set instead.) When gathering, each rank's
        reference rows serve its own anchors.
    """

    def __init__(
        self,
        rule,
        margin=1.0,
        distance_metric="L2",
        soft=False,
        reduction="mean",
        backend="auto",
        gather_across_processes=False,
        process_group=None,
        ranks_average_gradients=True,
    ):
        super().__init__()
        if rule not in _api.RULE_FUNCTIONS:
            raise ValueError(f"unknown rule {rule!r}: use one of {', '.join(_api.RULE_FUNCTIONS)}")
        if soft and rule != HARD:
            raise ValueError('soft=True is a form of the "hard" rule only')
        if reduction not in ("mean", "sum"):
            raise ValueError(f"unknown reduction {reduction!r}: use 'mean' or 'sum'")
        self.rule = Rule(rule, soft=bool(soft))
        self.margin = margin
        self.distance_metric = distance_metric
        self.reduction = reduction
        self.backend = backend
        self.gather_across_processes = gather_across_processes
        self.process_group = process_group
        self.ranks_average_gradients = ranks_average_gradients

    def extra_repr(self):
        soft = ", soft=True" if self.rule.soft else ""
        return (
            f"rule={self.rule.name!r}, margin={self.margin}, "
            f"distance_metric={self.distance_metric!r}{soft}, reduction={self.reduction!r}"
        )

    def forward(self, labels, embeddings, ref_labels=None, ref_embeddings=None):
        if not isinstance(embeddings, torch.Tensor):
            raise TypeError(f"embeddings must be a torch.Tensor, got {type(embeddings).__name__}")
        labels = torch.as_tensor(labels, device=embeddings.device)
        anchors = None
        world = 1
        if self.gather_across_processes:
            world = dist.get_world_size(self.process_group) if dist.is_initialized() else 1
            labels, embeddings, anchors = _gather(labels, embeddings, self.process_group)
        if (ref_labels is None) != (ref_embeddings is None):
            raise ValueError("ref_labels and ref_embeddings go together: pass both or neither")
        if ref_embeddings is not None:
            batch = embeddings.shape[0]
            if anchors is None:  # the batch rows, in front of the reference rows
                anchors = slice(0, batch)
            ref_labels = torch.as_tensor(ref_labels, device=embeddings.device)
            labels = torch.cat([labels.reshape(-1), ref_labels.reshape(-1).to(labels.dtype)])
            embeddings = torch.cat([embeddings, ref_embeddings.detach().to(embeddings.dtype)])
        options = dict(
            margin=self.margin, distance_metric=self.distance_metric, backend=self.backend
        )
        # (under torch.no_grad, needs_input_grad still follows requires_grad: ask both)
        want_grad = embeddings.requires_grad and torch.is_grad_enabled()
        total, denominator = _TripletSum.apply(
            embeddings, labels, self.rule, anchors, options, want_grad
        )
        if not self.gather_across_processes:
            loss = total * self.rule.scale(denominator.item(), self.reduction)
            return loss.to(embeddings.dtype)
        # every rank: the global sum and denominator; the value is the global loss, while the
        # gradient is the local part's (times W when the ranks average gradients, as DDP does)
        sums = torch.stack([total.detach().to(torch.float64), denominator])
        dist.all_reduce(sums, group=self.process_group)
        scale = self.rule.scale(sums[1].item(), self.reduction)
        part = total * (scale * (world if self.ranks_average_gradients else 1))
        loss = part + (sums[0] * scale - part).detach().to(part.dtype)
        return loss.to(embeddings.dtype)


class TripletSemiHardLoss(TripletLoss):
    """`semihard_numba.triplet_semihard_loss` as a module, as ``tfa.losses.TripletSemiHardLoss``:
    ``TripletSemiHardLoss(margin=1.0, distance_metric="L2")(labels, embeddings)``. The other
    keywords are `TripletLoss`'s."""

    def __init__(self, margin=1.0, distance_metric="L2", **options):
        super().__init__(SEMIHARD, margin, distance_metric, **options)


class TripletHardLoss(TripletLoss):
    """`semihard_numba.triplet_hard_loss` as a module, as ``tfa.losses.TripletHardLoss``:
    ``TripletHardLoss(margin=1.0, soft=False, distance_metric="L2")(labels, embeddings)``."""

    def __init__(self, margin=1.0, soft=False, distance_metric="L2", **options):
        super().__init__(HARD, margin, distance_metric, soft=soft, **options)


class TripletBatchAllLoss(TripletLoss):
    """`semihard_numba.triplet_batch_all_loss` (sentence-transformers' BatchAllTripletLoss, whose
    default margin is 5) as a module: ``TripletBatchAllLoss(margin=1.0)(labels, embeddings)``."""

    def __init__(self, margin=1.0, distance_metric="L2", **options):
        super().__init__(BATCH_ALL, margin, distance_metric, **options)


class TripletAllSemiHardLoss(TripletLoss):
    """`semihard_numba.triplet_all_semihard_loss` (every semi-hard triplet, as
    pytorch-metric-learning's TripletMarginMiner("semihard") with TripletMarginLoss) as a module:
    ``TripletAllSemiHardLoss(margin=1.0)(labels, embeddings)``."""

    def __init__(self, margin=1.0, distance_metric="L2", **options):
        super().__init__(ALL_SEMIHARD, margin, distance_metric, **options)

"""semihard_numba.torch: the modules against the NumPy functions, the golden cases and autograd's
numerical gradient; half precision; cross-batch memory; gathering across processes (gloo, CPU)."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch  # collected only where torch is installed (conftest.py); CI installs the CPU build

import semihard_numba as sn
from semihard_numba.torch import (
    TripletAllSemiHardLoss,
    TripletBatchAllLoss,
    TripletHardLoss,
    TripletLoss,
    TripletSemiHardLoss,
    _for_backend,
)

import torch_workers
from framework_cases import GOLDEN, check_golden

MODULES = {  # rule -> (module, the NumPy function with its gradient, keyword arguments)
    "semihard": (TripletSemiHardLoss, sn.triplet_semihard_loss_and_grad, {}),
    "hard": (TripletHardLoss, sn.triplet_hard_loss_and_grad, {}),
    "hard, soft": (TripletHardLoss, sn.triplet_hard_loss_and_grad, {"soft": True}),
    "batch-all": (TripletBatchAllLoss, sn.triplet_batch_all_loss_and_grad, {}),
    "all-semihard": (TripletAllSemiHardLoss, sn.triplet_all_semihard_loss_and_grad, {}),
}


def batch(seed, B=24, D=5, classes=4, dtype=torch.float64):
    rng = np.random.default_rng(seed)
    labels = torch.tensor(rng.integers(0, classes, B))
    x = torch.tensor(rng.normal(size=(B, D)), dtype=dtype, requires_grad=True)
    return labels, x


@pytest.mark.parametrize("rule", sorted(MODULES))
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_module_matches_the_numpy_function(rule, metric, reduction, dtype):
    module, loss_and_grad, options = MODULES[rule]
    labels, x = batch(3, dtype=dtype)
    loss = module(margin=0.7, distance_metric=metric, reduction=reduction, **options)(labels, x)
    loss.backward()
    want_loss, want_grad = loss_and_grad(
        labels.numpy(),
        x.detach().numpy(),
        0.7,
        distance_metric=metric,
        reduction=reduction,
        **options,
    )
    assert loss.dtype == dtype and loss.shape == () and x.grad.dtype == dtype
    assert loss.item() == pytest.approx(float(want_loss), rel=1e-6)
    np.testing.assert_allclose(x.grad.numpy(), want_grad, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("rule", sorted(MODULES))
@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_gradcheck(rule, metric):
    module, _, options = MODULES[rule]
    loss_fn = module(margin=0.7, distance_metric=metric, **options)
    labels, x = batch(5, B=12, classes=3)
    assert torch.autograd.gradcheck(lambda e: loss_fn(labels, e), (x,), eps=1e-6, atol=1e-6)


def test_gradcheck_with_anchor_subsets_and_reference_rows():
    """The reference rows of a cross-batch memory are constants: gradcheck perturbs only x."""
    labels, x = batch(6, B=10, classes=3)
    ref_labels, ref = batch(7, B=8, classes=3)
    loss_fn = TripletSemiHardLoss(margin=0.9)
    assert torch.autograd.gradcheck(
        lambda e: loss_fn(labels, e, ref_labels, ref.detach()), (x,), eps=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("rule", sorted(GOLDEN))
def test_golden_cases_through_the_modules(rule):
    """The reference implementations' own losses and gradients (tests/data), through torch
    (the cases where we deliberately differ are tested in tests/test_golden.py)."""
    cases, differ = GOLDEN[rule]
    for case in cases():
        if case.case in differ:
            continue
        soft = {"soft": case.soft} if rule == "hard" else {}
        loss_fn = TripletLoss(rule, margin=case.margin, distance_metric=case.metric, **soft)
        x = torch.tensor(case.embeddings, requires_grad=True)
        loss = loss_fn(torch.tensor(case.labels), x)
        loss.backward()
        check_golden(case, loss.item(), x.grad.numpy())


@pytest.mark.parametrize("half", [torch.float16, torch.bfloat16])
def test_half_precision_is_computed_in_float32(half):
    labels, x = batch(8, dtype=torch.float32)
    x_half = x.detach().to(half).requires_grad_()
    loss = TripletSemiHardLoss()(labels, x_half)
    loss.backward()
    want_loss, want_grad = sn.triplet_semihard_loss_and_grad(
        labels.numpy(), x_half.detach().float().numpy()
    )
    assert loss.dtype == half and x_half.grad.dtype == half
    assert loss.item() == torch.tensor(float(want_loss)).to(half).item()
    assert torch.equal(x_half.grad, torch.from_numpy(want_grad).to(half))


@pytest.mark.parametrize(
    "label_dtype", [torch.int8, torch.uint8, torch.int16, torch.int32, torch.int64]
)
def test_any_integer_labels(label_dtype):
    labels, x = batch(9)
    want = TripletSemiHardLoss()(labels, x)
    got = TripletSemiHardLoss()(labels.to(label_dtype), x)
    assert got.item() == want.item()
    assert TripletSemiHardLoss()(labels.reshape(-1, 1), x).item() == want.item()


def test_cpu_tensors_reach_numpy_without_a_copy():
    x = torch.randn(6, 3)
    assert _for_backend(x).ctypes.data == x.data_ptr()
    labels = torch.arange(6)
    assert _for_backend(labels).ctypes.data == labels.data_ptr()


def test_without_gradient_only_the_loss_is_computed(monkeypatch):
    labels, x = batch(10)
    want = TripletSemiHardLoss()(labels, x).item()

    def no_gradient_wanted(*args, **kwargs):
        raise AssertionError("the gradient was computed under torch.no_grad")

    monkeypatch.setattr(sn._api, "triplet_semihard_loss_and_grad", no_gradient_wanted)
    monkeypatch.setitem(
        sn._api.RULE_FUNCTIONS, "semihard", (sn.triplet_semihard_loss, no_gradient_wanted)
    )
    with torch.no_grad():
        assert TripletSemiHardLoss()(labels, x).item() == want
    assert TripletSemiHardLoss()(labels, x.detach()).item() == want


@pytest.mark.parametrize("rule", sorted(MODULES))
def test_reference_rows_join_the_candidates(rule):
    """ref_embeddings: the batch rows are the anchors, the batch and the reference rows the
    candidates; the batch rows' gradient is that of the whole set's, the reference rows get none."""
    module, loss_and_grad, options = MODULES[rule]
    labels, x = batch(11, B=10, classes=3)
    ref_labels, ref = batch(12, B=14, classes=4)
    loss = module(**options)(labels, x, ref_labels, ref)
    loss.backward()
    everything = np.concatenate([x.detach().numpy(), ref.detach().numpy()])
    want_loss, want_grad = loss_and_grad(
        np.concatenate([labels, ref_labels]), everything, anchors=slice(0, 10), **options
    )
    assert loss.item() == pytest.approx(float(want_loss), rel=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), want_grad[:10], rtol=1e-12, atol=1e-15)
    assert ref.grad is None


def test_cross_batch_memory_recipe():
    """The README's recipe: a queue of detached past embeddings behind each batch. Training a
    linear embedding with it lowers the loss of held-out batches."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(8, 16)) * 2

    def draw(n):
        labels = rng.integers(0, 8, n)
        return torch.tensor(labels), torch.tensor(centers[labels] + rng.normal(size=(n, 16)))

    model = torch.nn.Linear(16, 4).double()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    loss_fn = TripletSemiHardLoss(margin=0.5)
    memory_labels, memory = torch.zeros(0, dtype=torch.int64), torch.zeros(0, 4).double()
    held_labels, held = draw(64)
    before = loss_fn(held_labels, model(held)).item()
    for _ in range(60):
        labels, inputs = draw(16)
        embeddings = model(inputs)
        loss = loss_fn(labels, embeddings, memory_labels, memory)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        memory = torch.cat([embeddings.detach(), memory])[:64]  # the newest 64 rows
        memory_labels = torch.cat([labels, memory_labels])[:64]
    assert memory.shape == (64, 4)
    assert loss_fn(held_labels, model(held)).item() < 0.5 * before


def test_module_errors():
    labels, x = batch(13)
    with pytest.raises(ValueError, match="unknown rule"):
        TripletLoss("semi-hard")
    with pytest.raises(ValueError, match="unknown reduction"):
        TripletSemiHardLoss(reduction="none")
    with pytest.raises(ValueError, match="soft=True"):
        TripletLoss("batch-all", soft=True)
    with pytest.raises(ValueError, match="pass both or neither"):
        TripletSemiHardLoss()(labels, x, ref_labels=labels)
    with pytest.raises(TypeError, match="torch.Tensor"):
        TripletSemiHardLoss()(labels, x.detach().numpy())
    with pytest.raises(ValueError, match="disagree on the batch size"):
        TripletSemiHardLoss()(labels[:-1], x)
    with pytest.raises(RuntimeError, match="init_process_group"):
        TripletSemiHardLoss(gather_across_processes=True)(labels, x)


def test_the_package_imports_and_works_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import semihard_numba as sn\n"
        "print(float(sn.triplet_semihard_loss([0, 0, 1], [[0.0], [1.0], [1.5]])))\n"
        "try:\n    import semihard_numba.torch\nexcept ImportError as e:\n    print(e)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loss, message = run.stdout.splitlines()
    assert float(loss) == 1.0
    assert "pip install" in message and "[torch]" in message


def _spawn(worker, world, tmp_path, *args):
    address = f"file://{tmp_path / 'rendezvous'}"
    torch.multiprocessing.spawn(worker, args=(world, address, *args), nprocs=world, join=True)


@pytest.mark.parametrize(
    "sizes",
    [
        pytest.param([5, 9], id="2 processes", marks=pytest.mark.full),
        pytest.param([6, 1, 4], id="3 processes"),
        pytest.param([0, 8], id="an empty rank", marks=pytest.mark.full),
    ],
)
def test_gather_across_processes(sizes, tmp_path):
    _spawn(torch_workers.loss_and_rows, len(sizes), tmp_path, sizes)


def test_distributed_data_parallel_gradients_equal_one_process(tmp_path):
    _spawn(torch_workers.ddp_parameters, 2, tmp_path, [7, 4])


@pytest.mark.full  # slow: the full tier (tests/tiers.py)
def test_inconsistent_input_on_one_rank_raises_on_every_rank(tmp_path):
    _spawn(torch_workers.inconsistent_input, 3, tmp_path, 1)


@pytest.mark.full  # slow: the full tier (tests/tiers.py)
def test_ddp_example_trains_with_torchrun():
    """examples/train_ddp.py as the README runs it, two processes on CPU."""
    script = Path(__file__).resolve().parents[1] / "examples" / "train_ddp.py"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node"]
    run = subprocess.run(
        [*command, "2", str(script), "--steps", "30"], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stderr[-3000:]
    before, after = re.search(r"before ([\d.]+), after ([\d.]+)", run.stdout).groups()
    assert float(after) < 0.5 * float(before)
    assert "global batch of 2 x 32" in run.stdout

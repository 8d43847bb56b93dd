"""The dispatcher's rules: which backend a call runs on, and what it says when it cannot.

These run in the normal test process, without a GPU and without the CUDA simulator; a usable GPU is
simulated by monkeypatching `_dispatch.cuda_status` (the kernels themselves are tested in
tests/test_cuda.py).
"""

import os
import subprocess
import sys
import types

import numpy as np
import pytest

import semihard_numba as sn
from semihard_numba import _cpu, _dispatch

SIMULATOR = os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def batch(B=12, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 3, B), rng.normal(size=(B, 4)).astype(np.float32)


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(_dispatch, "cuda_status", lambda: (False, "no usable CUDA GPU (test)"))


@pytest.fixture
def fake_gpu(monkeypatch):
    """A usable "GPU" whose backend module records the batches it gets."""
    calls = []
    fake = types.SimpleNamespace(
        evaluate=lambda b, *_: calls.append(("loss", b)) or (0.25, None, None),
        device_batch=lambda *args: ("device batch", args),
    )
    monkeypatch.setattr(_dispatch, "cuda_status", lambda: (True, "fake GPU"))
    monkeypatch.setattr(_dispatch, "_cuda_backend", lambda: fake)
    return fake, calls


class FakeDeviceArray:
    """Quacks like a CuPy array for the detection rule only."""

    __cuda_array_interface__ = {
        "shape": (12, 4),
        "typestr": "<f4",
        "data": (0, False),
        "version": 3,
    }


def test_importing_the_package_does_not_import_numba_cuda():
    code = "import sys, semihard_numba; assert 'numba.cuda' not in sys.modules, 'imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_on_host_is_cpu_without_gpu(no_gpu, monkeypatch):
    labels, x = batch()
    monkeypatch.setenv(_dispatch.CUDA_MIN_BATCH_ENV, "1")
    module, b = _dispatch.resolve(labels, x, 1.0, "L2", "auto", True)
    assert module is _cpu and isinstance(b.x, np.ndarray)
    assert sn.triplet_semihard_loss(labels, x) == sn.triplet_semihard_loss(labels, x, backend="cpu")


def test_auto_small_host_batches_never_probe_cuda(monkeypatch):
    def probe():
        raise AssertionError("cuda probed for a small batch")

    monkeypatch.setattr(_dispatch, "cuda_status", probe)
    monkeypatch.delenv(_dispatch.CUDA_MIN_BATCH_ENV, raising=False)
    labels, x = batch()
    assert _dispatch.resolve(labels, x, 1.0, "L2", "auto", True)[0] is _cpu


def test_auto_uses_the_gpu_from_the_crossover_on(fake_gpu, monkeypatch):
    fake, calls = fake_gpu
    labels, x = batch(B=12)
    monkeypatch.setenv(_dispatch.CUDA_MIN_BATCH_ENV, "12")
    assert _dispatch.resolve(labels, x, 1.0, "L2", "auto", True)[0] is fake
    assert sn.triplet_semihard_loss(labels, x) == np.float32(0.25)
    assert isinstance(calls[0][1].x, np.ndarray) and np.array_equal(
        calls[0][1].x, x
    )  # a host batch
    monkeypatch.setenv(_dispatch.CUDA_MIN_BATCH_ENV, "13")
    assert _dispatch.resolve(labels, x, 1.0, "L2", "auto", True)[0] is _cpu


def test_default_crossover(fake_gpu, monkeypatch):
    monkeypatch.delenv(_dispatch.CUDA_MIN_BATCH_ENV, raising=False)
    assert _dispatch.cuda_min_batch() == _dispatch.DEFAULT_CUDA_MIN_BATCH == 4096
    monkeypatch.setenv(_dispatch.CUDA_MIN_BATCH_ENV, " ")
    assert _dispatch.cuda_min_batch() == 4096
    labels, x = batch(B=12)
    assert _dispatch.resolve(labels, x, 1.0, "L2", "auto", True)[0] is _cpu


@pytest.mark.parametrize(
    "value,expected", [("0", 0), ("1", 1), (" 2048 ", 2048), ("100000", 100000)]
)
def test_crossover_env_parsing(monkeypatch, value, expected):
    monkeypatch.setenv(_dispatch.CUDA_MIN_BATCH_ENV, value)
    assert _dispatch.cuda_min_batch() == expected


@pytest.mark.parametrize("value", ["-1", "4k", "1e4", "2.5", "many"])
def test_crossover_env_invalid(monkeypatch, value):
    monkeypatch.setenv(_dispatch.CUDA_MIN_BATCH_ENV, value)
    with pytest.raises(
        ValueError, match="SEMIHARD_NUMBA_CUDA_MIN_BATCH must be a non-negative integer"
    ):
        _dispatch.cuda_min_batch()
    labels, x = batch()
    with pytest.raises(ValueError, match="SEMIHARD_NUMBA_CUDA_MIN_BATCH"):
        sn.triplet_semihard_loss(labels, x)  # read at call time, by backend="auto"
    assert sn.triplet_semihard_loss(labels, x, backend="cpu") >= 0  # explicit backends ignore it


def test_auto_sends_device_input_to_cuda(fake_gpu):
    fake, _ = fake_gpu
    labels, _x = batch()
    module, b = _dispatch.resolve(labels, FakeDeviceArray(), 1.0, "L2", "auto", True)
    assert module is fake and b[0] == "device batch"
    module, b = _dispatch.resolve(labels, FakeDeviceArray(), 1.0, "L2", "cuda", True)
    assert module is fake and b[0] == "device batch"


def test_cuda_without_gpu_raises(no_gpu):
    labels, x = batch()
    with pytest.raises(RuntimeError, match=r'backend "cuda" is not usable.*no usable CUDA GPU'):
        sn.triplet_semihard_loss(labels, x, backend="cuda")
    with pytest.raises(RuntimeError, match="not usable"):
        sn.mine_semihard(labels, FakeDeviceArray())  # auto with device input


@pytest.mark.skipif(SIMULATOR, reason="the simulator makes CUDA usable")
def test_real_status_without_gpu_names_the_extras():
    usable, reason = _dispatch.cuda_status()
    if usable:
        pytest.skip("this machine has a usable GPU")
    assert "semihard-numba[cuda12]" in reason and "semihard-numba[cuda13]" in reason
    labels, x = batch()
    with pytest.raises(RuntimeError, match=r"pip install"):
        sn.triplet_semihard_loss(labels, x, backend="cuda")


def test_import_failure_is_reported(monkeypatch):
    monkeypatch.setattr(_dispatch, "_cuda_status", None)
    monkeypatch.setitem(sys.modules, "semihard_numba._cuda", None)  # makes the import fail
    monkeypatch.delattr(sn, "_cuda", raising=False)
    usable, reason = _dispatch.cuda_status()
    assert not usable and "numba.cuda cannot be imported" in reason and "[cuda12]" in reason


def test_backends_report(no_gpu):
    report = sn.backends()
    assert set(report) == {"python", "numpy", "cpu", "cuda"}
    for name, (usable, reason) in report.items():
        assert isinstance(usable, bool) and isinstance(reason, str) and reason
    assert report["python"][0] and report["numpy"][0] and report["cpu"][0]
    assert report["cuda"] == (False, "no usable CUDA GPU (test)")


def test_backends_report_with_gpu(fake_gpu):
    assert sn.backends()["cuda"] == (True, "fake GPU")


@pytest.mark.parametrize("name", ["gpu", "CPU", "", None, 3, "cuda "])
def test_unknown_backend(name):
    labels, x = batch()
    with pytest.raises(
        ValueError, match=r"unknown backend .*'auto', 'python', 'numpy', 'cpu', 'cuda'"
    ):
        sn.triplet_semihard_loss(labels, x, backend=name)


def test_device_detection():
    assert _dispatch.is_device_array(FakeDeviceArray())
    assert not _dispatch.is_device_array(np.zeros(3))
    assert not _dispatch.is_device_array([1.0, 2.0])

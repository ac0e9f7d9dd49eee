"""Where a run computes, checked on a CPU: the device and precision choice for GPUs (mocked), torch's flags per run,
a dry run of train_run on the meta device, sweep trial resources, the four-step one-cycle, and gpu_check's skip."""
import importlib.util
import math
import subprocess
import sys

import pytest
import torch

from labkit import device as dev
from labkit.checkpoint import CheckpointError
from labkit.predict import input_gradients
from labkit.config import DEFAULT_CHECKPOINT, PROJECT_ROOT
from labkit.recipes import recipe
from labkit.device import DeviceError, RunSetup
from labkit.models import build_model, layer_table
from labkit.predict import Predictor
from labkit.train import one_cycle, train_run

GPU_CHECK = PROJECT_ROOT / "benchmarks" / "gpu_check.py"
CUDA = torch.device("cuda")


def _tiny(data, n):
    return {**data, "x_train": data["x_train"][:n], "y_train": data["y_train"][:n]}


@pytest.fixture
def gpu(monkeypatch):
    """A pretend GPU of a chosen compute capability: set(capability, native bf16, torch knows including_emulation)."""
    def set_gpu(capability, native, new_torch=True):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Pretend GPU")
        if new_torch:  # emulation counts as support unless asked not to, as in torch
            monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native or including_emulation)
        else:
            monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    return set_gpu


@pytest.fixture
def cuda_flags():
    """torch's TF32 and cuDNN flags, put back after the test."""
    names = [(torch.backends.cuda.matmul, "allow_tf32"), (torch.backends.cudnn, "allow_tf32"),
             (torch.backends.cudnn, "deterministic"), (torch.backends.cudnn, "benchmark")]
    saved = [getattr(obj, name) for obj, name in names]
    yield
    for (obj, name), value in zip(names, saved):
        setattr(obj, name, value)


# ---------------------------------------------------------------- device and precision


@pytest.mark.parametrize("new_torch", [True, False])
def test_auto_precision_on_a_t4_is_fp32_and_on_an_a100_bf16(gpu, new_torch):
    """Compute capability 7.5 (T4) only emulates bf16: "auto" trains in fp32 there; 8.0 (A100) and 9.0 (H100) in bf16."""
    gpu((7, 5), native=False, new_torch=new_torch)
    assert torch.cuda.is_bf16_supported() is True  # what torch's default answer says, emulation included
    assert dev.resolve_precision("auto", CUDA, "improved") == "fp32"
    assert dev.resolve_precision("bf16", CUDA, "improved") == "bf16"  # asked for explicitly: given
    assert dev.setup_run(recipe("improved", device="cuda")).precision == "fp32"
    for capability in ((8, 0), (9, 0)):
        gpu(capability, native=True, new_torch=new_torch)
        assert dev.resolve_precision("auto", CUDA, "improved") == "bf16"
        assert dev.resolve_precision("auto", CUDA, "baseline") == "fp32"  # the report's network stays fp32


def test_setup_on_a_gpu_turns_tf32_off_and_determinism_on(gpu, cuda_flags):
    gpu((8, 0), native=True)
    setup = dev.setup_run(recipe("improved", device="auto"))
    assert setup == RunSetup(device=CUDA, precision="bf16", tf32=False, deterministic=True)
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True  # cuDNN's default: TF32 on
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    dev.apply(setup)
    assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    record = setup.record()
    assert record["device_type"] == "cuda" and record["device_name"] == "Pretend GPU" and record["capability"] == "8.0"
    assert record["precision"] == "bf16" and record["tf32"] is False and record["deterministic"] is True
    assert record["cuda"] == torch.version.cuda and record["cudnn_tf32"] is False and "cudnn" in record


def test_setup_on_the_cpu_changes_no_flag(cuda_flags):
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = True, True
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = False, True
    setup = dev.setup_run(recipe("improved", device="cpu", precision="fp32"))
    dev.apply(setup)
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    assert not torch.backends.cudnn.deterministic and torch.backends.cudnn.benchmark
    assert setup.record() == {"device_type": "cpu", "device": "cpu", "device_name": dev.cpu_name(), "precision": "fp32",
                              "tf32": False, "deterministic": True}


def test_cuda_without_a_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(DeviceError, match="no CUDA device"):
        dev.setup_run(recipe("baseline", device="cuda"))
    assert dev.setup_run(recipe("baseline", device="auto")).device == torch.device("cpu")


# ---------------------------------------------------------------- training


def test_baseline_in_bf16_without_the_kernel_trains(no_kernel, small_data):
    """--model baseline --precision bf16 off the compiled kernel (every GPU; CPUs without a C compiler): the chain's
    backward multiplied the bf16 conv output with fp32 weights (addmv dtype error)."""
    r = train_run(recipe("baseline", epochs=1, limit_train=2000, precision="bf16", device="cpu"), data=small_data)
    fp32 = train_run(recipe("baseline", epochs=1, limit_train=2000, device="cpu"), data=small_data)
    assert r["precision"] == r["setup"]["precision"] == "bf16" and r["setup"]["device_type"] == "cpu"
    assert all(p.dtype == torch.float32 for p in r["final_model"].parameters())
    got, want = r["epochs"][0], fp32["epochs"][0]
    assert math.isfinite(got["train_loss"]) and abs(got["test_acc"] - want["test_acc"]) < 0.05, (got, want)


@pytest.mark.parametrize("limit_train", [385, 512])
def test_one_cycle_of_exactly_four_steps_trains(limit_train, small_data):
    """The improved recipe, 1 epoch of 385 to 512 images: 4 steps, where torch's OneCycleLR divided by zero."""
    r = train_run(recipe("improved", epochs=1, limit_train=limit_train, device="cpu"), data=_tiny(small_data, limit_train))
    assert len(r["epochs"]) == 1 and math.isfinite(r["epochs"][0]["train_loss"])


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 6, 8, 9, 17])
def test_one_cycle_schedule_for_tiny_step_counts(total):
    """Every step's lr within [peak/1000, peak], ending at peak/1000; a warm-up from peak/10 from 5 steps on."""
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1.0, momentum=0.9)
    sched = one_cycle(opt, 0.5, total)
    lrs = []
    for _ in range(total):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert all(0.5 / 1000 - 1e-12 <= lr <= 0.5 + 1e-12 for lr in lrs), lrs
    assert lrs[-1] == pytest.approx(0.5 / 1000)
    if total >= 5:
        assert lrs[0] == pytest.approx(0.05) and max(lrs) > lrs[0]
    else:  # no warm-up: annealing only
        assert lrs == sorted(lrs, reverse=True)


class _Steps:
    """A progress object that counts the steps and epochs train_run reports."""

    def __init__(self):
        self.steps, self.epochs = 0, 0

    def batch(self, epoch, step, steps):
        self.steps = step

    def epoch_done(self, row):
        self.epochs += 1


@pytest.mark.parametrize("model", ["baseline", "improved"])
def test_dry_run_on_the_meta_device_has_no_host_read_in_the_step_loop(model, small_data, monkeypatch):
    """train_run on the meta device (tensors without data), given CPU data: every step of the epoch runs, and the
    first host read is the evaluation after the loop. A .item() inside the step loop, or a tensor left on the CPU
    (data, shuffle, augmentation, generator), would fail a step instead."""
    import labkit.train

    meta = RunSetup(device=torch.device("meta"), precision="fp32", tf32=False, deterministic=True)
    monkeypatch.setattr(labkit.train, "setup_run", lambda cfg: meta)
    progress = _Steps()
    cfg = recipe(model, epochs=1, limit_train=300, device="cpu")
    with pytest.raises(RuntimeError, match="item.. cannot be called on meta tensors"):
        train_run(cfg, data=_tiny(small_data, 300), progress=progress)
    assert progress.steps == 3 and progress.epochs == 0  # all 3 steps (300 images / 128) ran, on meta tensors


def test_summary_and_input_gradients_follow_the_models_device(small_data):
    """The probe of layer_table() and the targets of input_gradients() are built on the model's device (meta here)."""
    model = build_model("improved").to("meta")
    assert "total" in layer_table(model) and "(10,)" in layer_table(model)
    saliency = input_gradients(model, small_data["x_test"][:3], normalize=True, target=[1, 2, 3])
    assert saliency.shape == (3, 28, 28) and saliency.device.type == "meta"
    baseline = build_model("baseline")
    x = small_data["x_test"][:3]
    by_list = input_gradients(baseline, x, normalize=False, target=[7, 2, 1])
    by_tensor = input_gradients(baseline, x, normalize=False, target=torch.tensor([7, 2, 1]))
    assert torch.equal(by_list, by_tensor) and by_list.abs().sum() > 0


# ---------------------------------------------------------------- inference


def test_predictor_on_a_missing_gpu_names_the_device(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for name in ("cuda", "cuda:1"):
        with pytest.raises(DeviceError) as e:
            Predictor(device=name)
        assert not isinstance(e.value, CheckpointError)
        assert str(e.value) == (f"data/weights/{DEFAULT_CHECKPOINT.name}: cannot load onto device {name!r}: "
                                "torch sees no CUDA device (use 'cpu')")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(DeviceError, match=r"device 'cuda:1': torch sees 1 CUDA device\(s\)"):
        Predictor(device="cuda:1")
    with pytest.raises(DeviceError, match="not a device name"):
        Predictor(device="gpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert Predictor(device="auto").device == torch.device("cpu")


# ---------------------------------------------------------------- sweeps


@pytest.mark.parametrize("device, cluster_gpus, per_trial, want", [
    ("cpu", 0, None, (0.0, "cpu")),
    ("cpu", 2, None, (0.0, "cpu")),  # a CPU sweep on a GPU machine reserves no GPU
    ("cpu", 2, 0, (0.0, "cpu")),
    ("auto", 0, None, (0.0, "cpu")),
    ("auto", 1, None, (0.25, "cuda")),
    ("auto", 1, 0, (0.0, "cpu")),  # Ray hides no GPU from a zero-GPU worker: it must not use cuda:0 unscheduled
    ("auto", 4, 1, (1.0, "cuda")),
    ("cuda", 1, None, (0.25, "cuda")),
    ("cuda", 1, 0.5, (0.5, "cuda")),
])
def test_trial_resources(device, cluster_gpus, per_trial, want):
    assert dev.trial_resources(device, cluster_gpus, per_trial) == want


@pytest.mark.parametrize("device, cluster_gpus, per_trial, message", [
    ("cuda", 1, 0, r"device 'cuda' asked for, but the trials get no GPU \(give --gpus-per-trial > 0\)"),
    ("cuda", 0, None, r"device 'cuda' asked for, but the trials get no GPU \(the cluster has none\)"),
    ("cpu", 1, 0.5, "device 'cpu' trains on no GPU, but 0.5 GPU"),
    ("auto", 1, -1, "gpus per trial must be >= 0"),
    ("tpu", 1, None, "device must be one of"),
])
def test_trial_resources_refused(device, cluster_gpus, per_trial, message):
    with pytest.raises(ValueError, match=message):
        dev.trial_resources(device, cluster_gpus, per_trial)


# ---------------------------------------------------------------- benchmarks/gpu_check.py


def _gpu_check_module():
    spec = importlib.util.spec_from_file_location("gpu_check", GPU_CHECK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_parses_its_arguments():
    gc = _gpu_check_module()
    args = gc.parse_args([])
    assert args.limit_train is None and args.epochs_timed == 1 and not args.quick
    args = gc.parse_args(["--quick"])
    assert args.quick and args.limit_train == gc.QUICK_LIMIT
    assert gc.parse_args(["--limit-train", "5000"]).limit_train == 5000
    with pytest.raises(SystemExit):
        gc.parse_args(["--limit-train", "0"])


def test_gpu_check_counts_failures():
    gc = _gpu_check_module()
    checks = gc.Checks()
    checks.check("same", "1", "1", True)
    assert checks.failed == 0
    checks.check("differs", "1", "2", False)
    assert checks.failed == 1 and [line.split()[-1] for line in checks.lines] == ["OK", "FAIL"]


def test_gpu_check_skips_in_one_line_without_a_gpu():
    """Run as a script with CUDA hidden (as on CI): one line, exit 0."""
    run = subprocess.run([sys.executable, str(GPU_CHECK)], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "CUDA_VISIBLE_DEVICES": ""}, cwd=PROJECT_ROOT)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "no CUDA device: gpu_check skipped\n"

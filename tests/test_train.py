import json

import pytest
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from labkit.checkpoint import load_checkpoint
from labkit.predict import predict_proba
from labkit.recipes import recipe
from labkit.data import to_input
from labkit.models import BaselineCNN, build_model
from labkit.progress import Progress
from labkit.runfolder import RunFolderError
from labkit.train import TrainingStopped, train_run, train_runs


def reference_loop(cfg, data):
    """A plain loop as one would write it from the report: DataLoader, the report's forward."""
    torch.manual_seed(cfg.seed)
    model = BaselineCNN()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    loader = DataLoader(TensorDataset(data["x_train"].float(), data["y_train"]), batch_size=cfg.batch_size, shuffle=True)
    rows = []
    for _ in range(cfg.epochs):
        loss_sum, correct, n = 0.0, 0, 0
        for xb, yb in loader:
            out = model.forward_reference(xb)
            loss = F.cross_entropy(out, yb)
            opt.zero_grad()
            loss.backward()
            opt.step()
            loss_sum += loss.item() * len(yb)
            correct += (out.argmax(1) == yb).sum().item()
            n += len(yb)
        with torch.no_grad():
            out = model.forward_reference(data["x_test"].float())
            test_loss = F.cross_entropy(out, data["y_test"]).item()
            test_acc = (out.argmax(1) == data["y_test"]).float().mean().item()
        rows.append({"train_loss": loss_sum / n, "train_acc": correct / n, "test_loss": test_loss, "test_acc": test_acc})
    return rows, model


@pytest.mark.parametrize("path", ["kernel", "fallback"])
def test_fast_path_matches_reference_loop(small_data, path, request):
    """labkit's per-epoch numbers and final weights against a plain DataLoader loop: same seed, same batches."""
    if path == "fallback":  # torch's conv2d + max_pool2d instead of the compiled kernel
        request.getfixturevalue("no_kernel")
    cfg = recipe("baseline", epochs=2, limit_train=2000, device="cpu")
    ref_rows, ref_model = reference_loop(cfg, small_data)
    result = train_run(cfg, data=small_data)
    for ours, ref in zip(result["epochs"], ref_rows):
        assert ours["train_loss"] == pytest.approx(ref["train_loss"], rel=1e-3)
        assert ours["test_loss"] == pytest.approx(ref["test_loss"], rel=1e-3)
        assert abs(ours["train_acc"] - ref["train_acc"]) <= 2 / 2000
        assert abs(ours["test_acc"] - ref["test_acc"]) <= 2 / 10000
    for a, b in zip(result["final_model"].parameters(), ref_model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3 * b.abs().max().item())


def test_report_counting_equals_the_reports_own_loop(small_data):
    """Same seed, same batches: the report's code counts exactly what train_run's report_counting says."""
    from labkit import reference as report_loop

    torch.manual_seed(1)
    model = report_loop.Net()
    opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    loader = DataLoader(TensorDataset(small_data["x_train"].float(), small_data["y_train"]), batch_size=128, shuffle=True)
    state = dict(model=model, loader_train=loader, criterion=torch.nn.CrossEntropyLoss(), optimizer=opt,
                 BATCH_SIZE=128, PATH=str(pytest.importorskip("tempfile").mktemp()), epoch=0)
    theirs = report_loop.train_epoch(state)
    ours = train_run(recipe("baseline", epochs=1, limit_train=2000, device="cpu"), data=small_data)["epochs"][0]
    assert ours["report_counting"]["train_acc"] == theirs["train_acc"]
    assert ours["report_counting"]["train_loss"] == pytest.approx(theirs["train_loss"], rel=1e-4)


@pytest.mark.parametrize("model", ["baseline", "improved"])
def test_one_step_lowers_the_loss(model, small_data):
    cfg = recipe(model, device="cpu")
    torch.manual_seed(0)
    net = build_model(model)
    x = to_input(small_data["x_train"][:256], cfg.normalize)
    y = small_data["y_train"][:256]
    first_lr = cfg.lr / 10 if cfg.schedule == "onecycle" else cfg.lr  # one-cycle starts at lr / div_factor
    opt = torch.optim.SGD(net.parameters(), lr=first_lr, momentum=cfg.momentum)
    net.train()
    before = F.cross_entropy(net(x), y)
    opt.zero_grad()
    before.backward()
    opt.step()
    after = F.cross_entropy(net(x), y)
    assert after.item() < before.item()


def test_same_seed_same_numbers(small_data):
    cfg = recipe("baseline", epochs=1, limit_train=2000, device="cpu")
    quiet = lambda n: Progress(n, 1, live=False, stream=open("/dev/null", "w"))
    two = train_runs(cfg.replace(seed=7), runs=2, progress=quiet(2))
    alone = train_runs(cfg.replace(seed=8), runs=1, progress=quiet(1))
    assert two["runs"][1]["seed"] == alone["runs"][0]["seed"] == 8
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(two["runs"][1]["epochs"]) == strip(alone["runs"][0]["epochs"])
    assert strip(two["runs"][0]["epochs"]) != strip(two["runs"][1]["epochs"])  # seeds 7 and 8 differ


def test_improved_model_learns(small_data):
    """BatchNorm, augmentation, normalised input and one-cycle, on 2,000 images (32 steps: peak lr 0.1 * 32 / 120)."""
    r = train_run(recipe("improved", epochs=2, limit_train=2000, device="cpu"), data=small_data)
    assert r["epochs"][-1]["test_acc"] > 0.85


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_recorded_test_accuracy_is_the_checkpoints_fp32_accuracy(precision, small_data, tmp_path):
    """Training may run in bf16; the recorded test numbers are the fp32 model's, as a reloaded checkpoint gives them."""
    cfg = recipe("improved", epochs=2, limit_train=2000, precision=precision, device="cpu")
    r = train_run(cfg, data=small_data, checkpoint=tmp_path / "run.pt")
    assert r["precision"] == precision
    model, ckpt = load_checkpoint(tmp_path / "run.pt")
    assert ckpt["config"]["precision"] == precision and all(p.dtype == torch.float32 for p in model.parameters())
    acc = (predict_proba(model, small_data["x_test"], cfg.normalize).argmax(1) == small_data["y_test"]).float().mean().item()
    assert abs(acc - r["epochs"][-1]["test_acc"]) <= 2 / 10000  # conv algorithms differ by layout: rare near-ties
    assert r["epochs"][-1]["test_acc"] > 0.8


def test_baseline_trains_in_bf16_too(small_data):
    """--model baseline --precision bf16: the fused op stays fp32 inside autocast, the W2·W1 chain runs in bf16."""
    r = train_run(recipe("baseline", epochs=1, limit_train=2000, precision="bf16", device="cpu"), data=small_data)
    assert r["precision"] == "bf16" and r["epochs"][-1]["test_acc"] > 0.7


def test_short_one_cycle_learns_instead_of_diverging(small_data):
    """16 steps of the improved recipe: the peak lr is scaled by 16 / min_peak_steps (at lr 0.1 the loss explodes)."""
    r = train_run(recipe("improved", epochs=1, limit_train=2000, device="cpu"), data=small_data)
    assert r["epochs"][-1]["test_loss"] < 2.3 and r["epochs"][-1]["test_acc"] > 0.5  # chance: 2.30, 0.1


class _Interrupt(Progress):
    """Stops training with Ctrl-C after `after` epochs in total."""

    def __init__(self, after):
        super().__init__(live=False, stream=open("/dev/null", "w"))
        self.left = after

    def epoch_done(self, row):
        self.left -= 1
        if self.left == 0:
            raise KeyboardInterrupt


def test_interrupted_runs_keep_finished_work_and_resume(tmp_path, small_data, capsys):
    cfg = recipe("baseline", epochs=2, limit_train=2000, device="cpu")
    out = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        train_runs(cfg, runs=2, out_dir=out, progress=_Interrupt(after=3))  # run 1 done, run 2 half
    saved = json.loads((out / "metrics.json").read_text())
    assert len(saved["runs"][0]["epochs"]) == 2 and len(saved["runs"][1]["epochs"]) == 1
    capsys.readouterr()
    resumed = train_runs(cfg, runs=2, out_dir=out, progress=Progress(live=False, stream=open("/dev/null", "w")))
    assert "finished earlier" in capsys.readouterr().out
    assert resumed["runs"][0]["epochs"] == saved["runs"][0]["epochs"]  # loaded, not retrained
    assert resumed["runs"][0]["provenance"] == saved["runs"][0]["provenance"]  # with the provenance it was made with
    assert len(resumed["runs"][1]["epochs"]) == 2
    fresh = train_runs(cfg.replace(seed=2), runs=1, progress=Progress(live=False, stream=open("/dev/null", "w")))
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]
    assert strip(resumed["runs"][1]["epochs"]) == strip(fresh["runs"][0]["epochs"])


QUIET = dict(progress=Progress(live=False, stream=open("/dev/null", "w")))


def test_metrics_json_cut_short_is_kept_and_rebuilt_from_checkpoints(tmp_path, small_data):
    cfg = recipe("baseline", epochs=1, limit_train=600, device="cpu")
    out = tmp_path / "runs"
    first = train_runs(cfg, runs=2, out_dir=out, **QUIET)
    text = (out / "metrics.json").read_text()
    (out / "metrics.json").write_text(text[: len(text) // 2])  # cut short, as a full disk would
    with pytest.warns(RuntimeWarning, match="rebuilt 2 finished run"):
        again = train_runs(cfg, runs=2, out_dir=out, **QUIET)
    assert [r["epochs"] for r in again["runs"]] == [r["epochs"] for r in first["runs"]]  # loaded, not retrained
    kept = list(out.glob("metrics.json.unreadable-*"))
    assert len(kept) == 1 and kept[0].read_text() == text[: len(text) // 2]
    assert json.loads((out / "metrics.json").read_text())["runs"] == json.loads(text)["runs"]


def test_metrics_json_of_wrong_shape_is_moved_aside_not_overwritten(tmp_path, small_data):
    out = tmp_path / "runs"
    out.mkdir()
    (out / "metrics.json").write_text('["not", "metrics"]')
    cfg = recipe("baseline", epochs=1, limit_train=600, device="cpu")
    with pytest.warns(RuntimeWarning, match="not the shape labkit writes"):
        train_runs(cfg, runs=1, out_dir=out, **QUIET)
    assert [p.read_text() for p in out.glob("metrics.json.unreadable-*")] == ['["not", "metrics"]']


def test_folder_of_another_config_is_refused_before_training(tmp_path, small_data):
    out = tmp_path / "runs"
    train_runs(recipe("baseline", epochs=1, limit_train=600, device="cpu"), runs=1, out_dir=out, **QUIET)
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(RunFolderError, match="another config .differs in epochs"):
        train_runs(recipe("baseline", epochs=2, limit_train=600, device="cpu"), runs=1, out_dir=out, **QUIET)
    assert (out / "metrics.json").read_bytes() == before


class _StopAfter(Progress):
    """Sets the stop event in the first step after `epochs` finished epochs, as a Stop button would."""

    def __init__(self, stop, epochs):
        super().__init__(live=False, stream=open("/dev/null", "w"))
        self.stop, self.left = stop, epochs

    def epoch_done(self, row):
        self.left -= 1

    def batch(self, epoch, step, steps):
        if self.left <= 0:
            self.stop.set()


def test_stop_ends_after_the_current_step_and_keeps_finished_epochs(tmp_path, small_data):
    import threading

    stop = threading.Event()
    cfg = recipe("baseline", epochs=3, limit_train=600, device="cpu")
    with pytest.raises(TrainingStopped, match="1 finished epoch"):
        train_runs(cfg, runs=1, out_dir=tmp_path, progress=_StopAfter(stop, 1), stop=stop)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [e["epoch"] for e in saved["runs"][0]["epochs"]] == [1]
    _, ckpt = load_checkpoint(tmp_path / "run-seed1.pt")
    assert [e["epoch"] for e in ckpt["metrics"]["epochs"]] == [1]


def test_a_diverging_run_stops_at_that_epoch_marked_and_with_strict_json(small_data, tmp_path):
    """lr 1e3 on raw pixels: the run stops after the epoch whose loss is not finite, at the step a plain loop
    (the oracle) first sees a non-finite loss; the row keeps nulls, metrics.json is strict JSON."""
    cfg = recipe("baseline", epochs=3, lr=1e3, limit_train=2000, device="cpu")
    torch.manual_seed(cfg.seed)
    model = BaselineCNN()
    opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    loader = DataLoader(TensorDataset(small_data["x_train"].float(), small_data["y_train"]), batch_size=cfg.batch_size,
                        shuffle=True)
    for first_bad, (xb, yb) in enumerate(loader, 1):
        loss = F.cross_entropy(model.forward_reference(xb), yb)
        if not torch.isfinite(loss):
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.isfinite(loss)
    with pytest.warns(RuntimeWarning, match=f"seed 1 diverged at epoch 1, step {first_bad} \\(loss not finite\\); "
                                            "lower the learning rate"):
        metrics = train_runs(cfg, runs=1, out_dir=tmp_path, progress=Progress(live=False))
    run = metrics["runs"][0]
    assert run["diverged"] == {"epoch": 1, "step": first_bad} and len(run["epochs"]) == 1
    assert run["epochs"][0]["train_loss"] is None and run["epochs"][0]["test_loss"] is None
    assert 0 <= run["epochs"][0]["test_acc"] <= 1

    def no_constants(name):
        raise AssertionError(f"bare {name}")

    saved = json.loads((tmp_path / "metrics.json").read_text(), parse_constant=no_constants)
    assert saved["runs"][0]["diverged"] == run["diverged"]
    assert load_checkpoint(tmp_path / "run-seed1.pt")[1]["metrics"]["diverged"] == run["diverged"]

"""labkit.checkpoint: what save_checkpoint writes loads back as the same model, model aliases included;
checkpoint.read refuses, before torch.load, anything that is not one, in one line."""
from __future__ import annotations

import os
import struct
import tracemalloc
import zipfile

import pytest
import torch

from labkit.checkpoint import CheckpointError, load_checkpoint, read, save_checkpoint
from labkit.predict import input_gradients, predict_proba
from labkit.config import WEIGHTS_DIR
from labkit.recipes import recipe
from labkit.models import build_model


def test_round_trip_and_the_old_model_name(tmp_path):
    cfg = recipe("baseline", epochs=1)
    torch.manual_seed(0)
    model = build_model("baseline")
    save_checkpoint(tmp_path / "a.pt", model, cfg, {"seed": 1, "epochs": [], "provenance": {"git_commit": "x"}})
    loaded, ckpt = load_checkpoint(tmp_path / "a.pt")
    assert ckpt["model"] == "baseline" and ckpt["provenance"] == {"git_commit": "x"}
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values()):
        assert torch.equal(a, b)
    old = torch.load(tmp_path / "a.pt", weights_only=True)
    old["model"], old["config"]["model"] = "seed", "seed"  # a file carrying the alias "seed"
    torch.save(old, tmp_path / "old.pt")
    with pytest.warns(UserWarning, match="called 'seed'; loaded as 'baseline'"):
        again, ckpt = load_checkpoint(tmp_path / "old.pt")
    assert ckpt["model"] == ckpt["config"]["model"] == "baseline" and type(again).__name__ == "BaselineCNN"


def test_predict_proba_and_saliency_shapes_against_softmax():
    torch.manual_seed(0)
    model = build_model("improved").eval()
    x = torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8)
    p = predict_proba(model, x, normalize=True, batch=2)
    with torch.no_grad():
        ref = torch.softmax(model(((x.float() / 255) - 0.1307) / 0.3081).double(), 1)
    torch.testing.assert_close(p, ref, rtol=1e-5, atol=1e-6)
    sal = input_gradients(model, x, normalize=True)
    assert sal.shape == (5, 28, 28) and torch.isfinite(sal).all() and sal.abs().sum() > 0


# -- checkpoint.read: what torch.load is never given


@pytest.fixture
def no_torch_load(monkeypatch):
    """torch.load fails the test if reached: the refusals below come before it."""
    def refuse(*_a, **_k):
        raise AssertionError("torch.load was reached")
    monkeypatch.setattr(torch, "load", refuse)


def _refusal(path) -> str:
    with pytest.raises(CheckpointError) as e:
        read(path)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_read_refuses_what_is_not_a_regular_file(tmp_path, no_torch_load):
    fifo = tmp_path / "pipe.pt"
    os.mkfifo(fifo)  # opened blocking, it would hang until a writer came
    assert _refusal(fifo).endswith("pipe.pt: is a FIFO (named pipe), not a labkit checkpoint")
    assert _refusal(tmp_path).endswith(": is a directory, not a labkit checkpoint")
    assert _refusal("/dev/zero") == "/dev/zero: is a character device, not a labkit checkpoint"
    assert _refusal(tmp_path / "none.pt").endswith("none.pt: model checkpoint not found")


def test_read_refuses_truncated_and_foreign_files(tmp_path, no_torch_load):
    cut = tmp_path / "cut.pt"
    cut.write_bytes((WEIGHTS_DIR / "baseline.pt").read_bytes()[:100_000])
    assert "not a labkit checkpoint (100,000 bytes, no zip directory at the end" in _refusal(cut)
    text = tmp_path / "notes.pt"
    text.write_text("not a checkpoint")
    assert "not a labkit checkpoint" in _refusal(text)


def test_a_compressed_entry_is_refused_before_it_inflates(tmp_path, no_torch_load):
    """A real checkpoint re-zipped with deflate: torch.load would inflate it (see below); read refuses it unread."""
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(WEIGHTS_DIR / "improved.pt") as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert "is compressed; torch.save stores entries uncompressed" in _refusal(deflated)


def test_torch_load_itself_inflates_a_compressed_entry(tmp_path):
    """The oracle for the test above: without read's check, torch would load (inflate) such a file."""
    deflated = tmp_path / "deflated.pt"
    with zipfile.ZipFile(WEIGHTS_DIR / "improved.pt") as src, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info))
    assert torch.load(deflated, weights_only=True)["model"] == "improved"


def _declare(data: bytes, entry: str, size: int, method: int | None = None) -> bytes:
    """data (a zip) with `entry`'s uncompressed size (and method) rewritten in both its headers."""
    data = bytearray(data)
    name = entry.encode()
    for sig, size_at, method_at, name_len_at, name_at in ((b"PK\x01\x02", 24, 10, 28, 46), (b"PK\x03\x04", 22, 8, 26, 30)):
        at = data.find(sig)
        while at >= 0:
            n = struct.unpack_from("<H", data, at + name_len_at)[0]
            if bytes(data[at + name_at:at + name_at + n]) == name:
                struct.pack_into("<I", data, at + size_at, size)
                if method is not None:
                    struct.pack_into("<H", data, at + method_at, method)
            at = data.find(sig, at + 4)
    return bytes(data)


@pytest.mark.parametrize("method", [None, zipfile.ZIP_DEFLATED])
def test_a_record_declaring_3_gib_is_refused_in_bounded_memory(tmp_path, no_torch_load, method):
    """The weights record of a real 1.6 MB checkpoint declared as 3 GiB (stored, or deflated as
    an inflating record would be): refused from the zip directory alone."""
    data = (WEIGHTS_DIR / "baseline.pt").read_bytes()
    big = max(zipfile.ZipFile(WEIGHTS_DIR / "baseline.pt").infolist(), key=lambda i: i.file_size).filename
    bomb = tmp_path / "bomb.pt"
    bomb.write_bytes(_declare(data, big, 3 * 2**30, method))
    assert zipfile.ZipFile(bomb).getinfo(big).file_size == 3 * 2**30
    tracemalloc.start()
    try:
        msg = _refusal(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ("declares 3,221,225,472 bytes" if method is None else "is compressed") in msg
    assert peak < 4 * len(data)  # the file and the zip directory, nothing of the declared 3 GiB


def test_what_a_file_holds_is_named_when_it_is_no_labkit_checkpoint(tmp_path):
    ckpt = torch.load(WEIGHTS_DIR / "improved.pt", weights_only=True)
    torch.save(ckpt["state_dict"], tmp_path / "bare.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    torch.save({"weights": 1}, tmp_path / "other.pt")
    assert "holds a bare state dict (20 tensors), not a labkit checkpoint; a labkit checkpoint is a dict with 'model', 'state_dict'" in _refusal(tmp_path / "bare.pt")
    assert "holds a list of 3 items, not a labkit checkpoint" in _refusal(tmp_path / "list.pt")
    assert "holds a dict without 'model' and 'state_dict' (keys: 'weights')" in _refusal(tmp_path / "other.pt")


def test_wrong_model_and_missing_weights_give_the_real_reason(tmp_path):
    ckpt = torch.load(WEIGHTS_DIR / "improved.pt", weights_only=True)
    torch.save({**ckpt, "model": "baseline"}, tmp_path / "renamed.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "renamed.pt")
    assert str(e.value).endswith("renamed.pt: says model 'baseline' but holds the weights of the 'improved' model; "
                                 "retrain it, or set its 'model' to 'improved'")
    state = dict(ckpt["state_dict"])
    first = next(iter(state))
    state.pop(first)
    state["extra.weight"] = torch.zeros(1)
    torch.save({**ckpt, "state_dict": state}, tmp_path / "missing.pt")
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(tmp_path / "missing.pt")
    assert f"its weights do not fit the 'improved' model: missing {first}; unexpected extra.weight" in str(e.value)
    with pytest.raises(CheckpointError, match="holds the 'improved' model, not the 'baseline' one asked for"):
        load_checkpoint(WEIGHTS_DIR / "improved.pt", expect="baseline")
    torch.save({**ckpt, "model": "resnet"}, tmp_path / "unknown.pt")
    with pytest.raises(CheckpointError, match="holds a model named 'resnet', which labkit does not have"):
        load_checkpoint(tmp_path / "unknown.pt")


def test_save_checkpoint_leaves_no_temporary_file(tmp_path):
    save_checkpoint(tmp_path / "a.pt", build_model("improved"), recipe("improved", epochs=1),
                    {"seed": 1, "epochs": [], "provenance": {}})
    assert [p.name for p in tmp_path.iterdir()] == ["a.pt"]
    assert read(tmp_path / "a.pt")["model"] == "improved"

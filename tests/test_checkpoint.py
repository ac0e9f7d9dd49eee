"""labkit.checkpoint: what save_checkpoint writes loads back as the same model, model aliases included."""
from __future__ import annotations

import pytest
import torch

from labkit.checkpoint import input_gradients, load_checkpoint, predict_proba, save_checkpoint
from labkit.config import recipe
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

"""Checkpoints (weights with the config, metrics and provenance that made them) and inference."""
from __future__ import annotations

import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

from .config import OLD_MODEL_NAMES
from .data import to_input
from .models import build_model
from .records import atomic_write

class CheckpointError(ValueError):
    """A model checkpoint is missing or unreadable."""


def save_checkpoint(path, model, cfg, result: dict) -> None:
    """State dict with the config, metrics and provenance that produced it, written atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "model": cfg.model,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": cfg.to_dict(),
        "metrics": {k: v for k, v in result.items() if k not in ("final_model", "provenance")},
        "provenance": result["provenance"],
    }
    atomic_write(path, lambda p: torch.save(payload, p))


def read(path, device="cpu") -> dict:
    """The checkpoint dict of a file save_checkpoint wrote; CheckpointError in one line otherwise."""
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{path}: cannot be read ({type(e).__name__})") from None
    if not isinstance(ckpt, dict) or "model" not in ckpt or "state_dict" not in ckpt:
        raise CheckpointError(f"{path}: not a labkit checkpoint")
    return ckpt


def load_checkpoint(path, device="cpu"):
    """(model in eval mode, checkpoint dict) from a file save_checkpoint wrote."""
    ckpt = read(path, device)
    name = ckpt["model"]
    if name in OLD_MODEL_NAMES:
        warnings.warn(f"{Path(path).name}: written when the {OLD_MODEL_NAMES[name]!r} model was called {name!r}; "
                      f"loaded as {OLD_MODEL_NAMES[name]!r}", UserWarning, stacklevel=2)
        ckpt["model"] = name = OLD_MODEL_NAMES[name]
        ckpt.get("config", {})["model"] = name
    model = build_model(name).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, ckpt


@torch.no_grad()
def predict_proba(model, x_uint8, normalize: bool, batch: int = 1000) -> torch.Tensor:
    """Softmax probabilities (N, 10), float64, of a model on uint8 images (N, 1, 28, 28), in chunks."""
    model.eval()
    return torch.cat([F.softmax(model(to_input(x_uint8[i:i + batch], normalize)).double(), 1)
                      for i in range(0, len(x_uint8), batch)])


def input_gradients(model, x_uint8, normalize: bool, target=None) -> torch.Tensor:
    """Saliency (N, 28, 28): gradient of the target logit (default: the predicted digit) times the input."""
    model.eval()
    param = next(model.parameters(), None)
    device = param.device if param is not None else x_uint8.device  # images and targets go to the model's device
    x = to_input(x_uint8.to(device), normalize).requires_grad_(True)  # (N, 1, 28, 28)
    logits = model(x)
    target = logits.argmax(1) if target is None else torch.as_tensor(target, dtype=torch.long, device=device)
    logits.gather(1, target.view(-1, 1)).sum().backward()
    return (x.grad * x).detach()[:, 0]

"""Inference: a model's probabilities and saliency on 28x28 images, and Predictor, a checkpoint loaded once
predicting arrays and image files (the body of `labkit predict`)."""
from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checkpoint import CheckpointError, load_checkpoint, nonfinite_weights
from .config import DEFAULT_CHECKPOINT, display_path
from .data import to_input
from .device import DeviceError, torch_device
from .preprocess import METHODS, ImageError, to_28x28


def target_from_name(name) -> int | None:
    """The digit a file name starts with (the report's GUI took the target from it), else None."""
    m = re.match(r"([0-9])(?![0-9])", Path(str(name)).name)
    return int(m.group(1)) if m else None


class Predictor:
    """A checkpoint loaded once; predicts 28x28 arrays and image files."""

    def __init__(self, checkpoint=None, device: str = "cpu"):
        path = Path(checkpoint) if checkpoint not in (None, "") else DEFAULT_CHECKPOINT
        self.checkpoint = path
        try:  # a device this machine lacks is named as such, not reported as an unreadable checkpoint
            device = torch_device(device)
        except DeviceError as e:
            raise DeviceError(f"{display_path(path)}: cannot load onto {e}") from None
        try:
            self.model, self.ckpt = load_checkpoint(path, device=device)
        except CheckpointError:
            raise
        except Exception as e:  # whatever load_checkpoint's checks do not foresee: still one line
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise CheckpointError(f"{display_path(path)}: not a readable labkit checkpoint ({reason})") from None
        bad = nonfinite_weights(self.model)
        if bad:  # it would predict "0 (probability nan)" for every picture
            shown = ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
            raise CheckpointError(f"{display_path(path)}: weights not finite (NaN or infinite in {shown}): the run "
                                  "that wrote it diverged; retrain with a lower learning rate")
        self.device = device
        self.normalize = bool(self.ckpt.get("config", {}).get("normalize", False))
        self.model_name = self.ckpt.get("model", "?")

    @torch.no_grad()
    def probabilities(self, arrays) -> np.ndarray:
        """Softmax probabilities (N, 10) of uint8 arrays (N, 28, 28) or one (28, 28)."""
        a = np.asarray(arrays, dtype=np.uint8)
        if a.ndim == 2:
            a = a[None]
        if a.shape[1:] != (28, 28):
            raise ValueError(f"expected 28x28 arrays, got shape {a.shape}")
        return predict_proba(self.model, torch.from_numpy(a.copy()).unsqueeze(1).to(self.device), self.normalize).cpu().numpy()

    def predict_array(self, arr28) -> dict:
        """{"digit", "probabilities": [10 floats], "input": the 28x28} of one preprocessed array."""
        arr = np.asarray(arr28, dtype=np.uint8)
        p = self.probabilities(arr)[0]
        return {"digit": int(p.argmax()), "probabilities": [float(v) for v in p], "input": arr}

    def predict_file(self, source, name=None, preprocessing: str = "mnist") -> dict:
        """Prediction dict of one image (path, bytes, file object or PIL Image); never raises for a
        bad file: {"path" or "name", "error": reason} instead."""
        if preprocessing not in METHODS:
            raise ValueError(f"preprocessing must be one of {METHODS}, not {preprocessing!r}")
        key = "name" if name is not None or not isinstance(source, (str, Path)) else "path"
        label = name if name is not None else (str(source) if key == "path" else "<image>")
        try:
            arr = to_28x28(source, preprocessing, name=label)
        except ImageError as e:
            return {key: label, "error": e.problem}
        except Exception as e:  # anything else wrong with a file must not stop the others
            return {key: label, "error": f"cannot use this file ({type(e).__name__}: {e})".splitlines()[0]}
        return {key: label, **self.predict_array(arr)}


def run_cli(images: list[str], checkpoint: str | None = None, preprocessing: str = "mnist",
            as_json: bool = False) -> int:
    """`labkit predict`: a line per image; 0 when all were predicted, 1 if any failed, 2 if the
    model or arguments are unusable, 141 when stdout's reader went away before the end (cli.main
    makes that quiet). Never lets a traceback reach the user."""
    try:
        if preprocessing not in METHODS:
            raise ValueError(f"--preprocessing must be one of {', '.join(METHODS)}, not {preprocessing!r}")
        if not images:
            raise ValueError("no image given")
        predictor = Predictor(checkpoint)
    except (CheckpointError, ValueError) as e:
        print(f"labkit predict: error: {e}", file=sys.stderr)
        return 2
    failed = 0
    for path in images:
        if getattr(sys.stdout, "broken", False):  # its reader has gone (`| head -n1`): stop, quietly
            return 141  # what a shell reports for a writer whose pipe closed
        r = predictor.predict_file(path, preprocessing=preprocessing)
        if "error" in r:
            failed += 1
            if as_json:
                print(json.dumps({"path": path, "error": r["error"]}), flush=True)
            else:
                print(f"{path}: error: {r['error']}", file=sys.stderr, flush=True)
            continue
        if as_json:
            print(json.dumps({"path": path, "digit": r["digit"], "probabilities": r["probabilities"]}), flush=True)
        else:
            print(f"{path}: {r['digit']} (probability {r['probabilities'][r['digit']]:.3f})", flush=True)
    return 1 if failed else 0


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

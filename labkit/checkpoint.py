"""Checkpoints: weights with the config, metrics and provenance that made them, written atomically and read
with bounds (the one torch.load)."""
from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path

import torch

from .config import MODEL_NAMES, OLD_MODEL_NAMES, display_path
from .models import build_model
from .records import atomic_write
from .safeio import ReadRefused, read_regular

MAX_CHECKPOINT_BYTES = 256 * 2**20  # labkit's checkpoints are 0.4-1.6 MB; also the cap on what the entries declare
MAX_ENTRIES = 10_000  # a checkpoint holds a dozen or two records (one per tensor)
LABKIT_CHECKPOINT = "a labkit checkpoint is a dict with 'model', 'state_dict', 'config', 'metrics', 'provenance' (labkit train writes it)"


class CheckpointError(ValueError):
    """A model checkpoint is missing or unreadable; the message is one line naming the file."""


def _refuse(path, problem: str) -> CheckpointError:
    return CheckpointError(f"{display_path(path)}: {problem}")


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
    buf = io.BytesIO()  # serialised in memory, so that a full disk is an OSError of our own write
    torch.save(payload, buf)
    atomic_write(path, buf.getbuffer())


def _check_archive(path, data: bytes) -> None:
    """Refuse what torch.load must not be given: anything but a zip of stored (uncompressed)
    entries whose declared sizes fit the file and the limit (so nothing can inflate)."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError):
        raise _refuse(path, f"not a labkit checkpoint ({len(data):,} bytes, no zip directory at the end as "
                            "torch.save writes: truncated, or another kind of file)") from None
    if len(infos) > MAX_ENTRIES:
        raise _refuse(path, f"not a labkit checkpoint ({len(infos):,} zip entries, over the limit of {MAX_ENTRIES:,})")
    total = 0
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise _refuse(path, f"not a labkit checkpoint (zip entry {info.filename!r} is compressed; torch.save "
                                "stores entries uncompressed, and inflating one is refused)")
        if info.file_size != info.compress_size or info.header_offset + info.compress_size > len(data):
            raise _refuse(path, f"damaged checkpoint (zip entry {info.filename!r} declares {info.file_size:,} bytes; "
                                f"the file is {len(data):,} bytes)")
        total += info.file_size
    if total > MAX_CHECKPOINT_BYTES:
        raise _refuse(path, f"not a labkit checkpoint (its entries declare {total:,} bytes, over the limit of "
                            f"{MAX_CHECKPOINT_BYTES:,})")


def _kind(value) -> str:
    if isinstance(value, dict):
        return f"a dict of {len(value)} entries"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of {len(value)} items"
    return f"a {type(value).__name__}"


def read(path, device="cpu") -> dict:
    """The dict of a labkit checkpoint file, checked before torch.load sees it (the one place that
    loads a checkpoint): a regular file within MAX_CHECKPOINT_BYTES, a zip of stored entries, loaded
    with weights_only, holding "model" and "state_dict"; CheckpointError with one line otherwise."""
    try:
        data = read_regular(path, MAX_CHECKPOINT_BYTES, "a labkit checkpoint")
    except ReadRefused as e:
        problem = "model checkpoint not found" if e.problem == "file not found" else e.problem
        raise _refuse(path, problem) from None
    _check_archive(path, data)
    try:
        ckpt = torch.load(io.BytesIO(data), map_location=device, weights_only=True)
    except Exception as e:  # torch raises many kinds for a bad file
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _refuse(path, f"not a readable labkit checkpoint ({reason})") from None
    if not isinstance(ckpt, dict):
        raise _refuse(path, f"holds {_kind(ckpt)}, not a labkit checkpoint; {LABKIT_CHECKPOINT}")
    if "model" not in ckpt or "state_dict" not in ckpt:
        if ckpt and all(isinstance(v, torch.Tensor) for v in ckpt.values()):
            raise _refuse(path, f"holds a bare state dict ({len(ckpt)} tensors), not a labkit checkpoint; "
                                f"{LABKIT_CHECKPOINT}")
        keys = ", ".join(repr(k) for k in list(ckpt)[:6]) + (", ..." if len(ckpt) > 6 else "")
        raise _refuse(path, f"holds a dict without 'model' and 'state_dict' (keys: {keys or 'none'}); {LABKIT_CHECKPOINT}")
    if not isinstance(ckpt["model"], str):
        raise _refuse(path, f"its 'model' is {_kind(ckpt['model'])}, not a model name ({', '.join(MODEL_NAMES)})")
    state = ckpt["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise _refuse(path, f"its 'state_dict' is {_kind(state)}, not a mapping of parameter names to tensors")
    if not isinstance(ckpt.get("config", {}), dict):
        raise _refuse(path, f"its 'config' is {_kind(ckpt['config'])}, not a mapping of TrainConfig fields")
    return ckpt


def _listed(names, n: int = 3) -> str:
    names = sorted(names)
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _fit_problem(state: dict, model: torch.nn.Module, name: str) -> str | None:
    """Why `state` does not load into `model` (the `name` model), in one line; None if it does."""
    expected = model.state_dict()
    missing = expected.keys() - state.keys()
    unexpected = state.keys() - expected.keys()
    shapes = [k for k in expected.keys() & state.keys() if tuple(expected[k].shape) != tuple(state[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    for other in MODEL_NAMES:  # weights of another model under this name: say which
        if other != name:
            ref = build_model(other).state_dict()
            if ref.keys() == state.keys() and all(tuple(ref[k].shape) == tuple(state[k].shape) for k in ref):
                return (f"says model {name!r} but holds the weights of the {other!r} model; "
                        f"retrain it, or set its 'model' to {other!r}")
    parts = []
    if missing:
        parts.append(f"missing {_listed(missing)}")
    if unexpected:
        parts.append(f"unexpected {_listed(unexpected)}")
    if shapes:
        k = sorted(shapes)[0]
        parts.append(f"wrong shape of {_listed(shapes)} ({k}: {tuple(state[k].shape)} in the file, "
                     f"{tuple(expected[k].shape)} in the model)")
    return f"its weights do not fit the {name!r} model: {'; '.join(parts)}"


def load_checkpoint(path, device="cpu", expect: str | None = None):
    """(model in eval mode, checkpoint dict) from a file save_checkpoint wrote; with `expect`, the
    model it must hold. CheckpointError with one line for anything else."""
    ckpt = read(path, device)
    name = ckpt["model"]
    if name in OLD_MODEL_NAMES:
        warnings.warn(f"{Path(path).name}: written when the {OLD_MODEL_NAMES[name]!r} model was called {name!r}; "
                      f"loaded as {OLD_MODEL_NAMES[name]!r}", UserWarning, stacklevel=2)
        ckpt["model"] = name = OLD_MODEL_NAMES[name]
        ckpt.get("config", {})["model"] = name
    if name not in MODEL_NAMES:
        raise _refuse(path, f"holds a model named {name!r}, which labkit does not have ({', '.join(MODEL_NAMES)})")
    if expect is not None and name != expect:
        raise _refuse(path, f"holds the {name!r} model, not the {expect!r} one asked for")
    model = build_model(name).to(device)
    problem = _fit_problem(ckpt["state_dict"], model, name)
    if problem:
        raise _refuse(path, problem)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:  # what _fit_problem does not foresee: torch's reason, on one line
        raise _refuse(path, f"its weights do not load into the {name!r} model ({' '.join(str(e).split())})") from None
    model.eval()
    return model, ckpt


def nonfinite_weights(model: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers of `model` holding NaN or infinite values."""
    return [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]

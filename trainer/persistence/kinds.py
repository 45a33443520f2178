"""What a file that is not the checkpoint a door expected holds, and how to load it instead.

Every load door (``fit(ckpt_path=...)``, ``validate/test/predict(ckpt_path=...)``,
``load_from_checkpoint``, ``Accelerator.load_state``, ``trainer merge-weights``) reads a file
with ``safe_load`` first; when what comes back is readable but of another kind -- plain weights,
a PyTorch Lightning checkpoint, an ``Accelerator.save_state`` file where a Trainer checkpoint was
expected or the reverse, a Hugging Face Accelerate folder -- ``describe`` names what was found
and the one call that loads it. Nothing here writes.
"""

from __future__ import annotations

import os
from typing import Any

import torch

# the files Hugging Face Accelerate's save_state writes into its folders
_ACCELERATE_FILES = ("model.safetensors", "pytorch_model.bin", "optimizer.bin", "scheduler.bin",
                     "random_states_0.pkl", "scaler.pt")


def describe(content: Any, path: str) -> tuple[str, str]:
    """``(what the file holds, how to load it)`` for content read from ``path``."""
    if not isinstance(content, dict):
        return f"a {type(content).__name__}, not a dict", "Pass a file written by Trainer.save_checkpoint or ModelCheckpoint."
    keys = list(content)
    if "pytorch-lightning_version" in content or "lightning_version" in content:
        version = content.get("pytorch-lightning_version") or content.get("lightning_version")
        return (f"a PyTorch Lightning checkpoint (Lightning {version})",
                "Its loop and optimizer state are not read here; start a new fit from its weights: "
                f"model.load_state_dict(torch.load({path!r}, weights_only=True)['state_dict']).")
    if "models" in content and "optimizers" in content and "state_dict" not in content:
        return ("an Accelerator.save_state file (models, optimizers, ...)",
                f"Load it with accelerator.load_state({os.path.dirname(path)!r}), or take a model's weights from "
                f"torch.load({path!r}, weights_only=True)['models'][i].")
    if "accelerator" in content and "state_dict" in content:  # format 2: the Trainer's names plus its own entry
        return ("an Accelerator.save_state file (state_dict, optimizer_states, accelerator, ...)",
                f"Load it with accelerator.load_state({os.path.dirname(path)!r}); its first model's weights load "
                f"with TrainModule.load_from_checkpoint({path!r}).")
    if "state_dict" in content and "loops" in content:
        return ("a Trainer checkpoint (Trainer.save_checkpoint / ModelCheckpoint)",
                f"Resume it with trainer.fit(model, ..., ckpt_path={path!r}), or load its weights with "
                f"model.load_state_dict(torch.load({path!r}, weights_only=True)['state_dict']).")
    if keys and all(isinstance(v, torch.Tensor) for v in content.values()):
        return (f"plain weights: a state dict of {len(keys)} tensor(s) ({_few(keys)})",
                f"Load them with model.load_state_dict(torch.load({path!r}, weights_only=True)) and start a new fit.")
    return (f"a dict with keys {_few(keys)}" if keys else "an empty dict",
            "Pass a file written by Trainer.save_checkpoint or ModelCheckpoint.")


def describe_directory(directory: str) -> tuple[str, str] | None:
    """``(what, fix)`` for a directory that holds no checkpoint of ours; None if it holds nothing known."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return None
    accelerate = [n for n in names if n in _ACCELERATE_FILES or n.startswith("random_states_")]
    if accelerate:
        weights = next((n for n in ("model.safetensors", "pytorch_model.bin") if n in names), None)
        how = (f"load the weights with safetensors.torch.load_file({os.path.join(directory, weights)!r}) and "
               "model.load_state_dict(...)" if weights == "model.safetensors" else
               "load the weights yourself and model.load_state_dict(...)")
        return (f"a Hugging Face Accelerate checkpoint folder ({_few(accelerate)})",
                "This library does not read Accelerate's folders (their .bin/.pkl files are pickles, which can run "
                f"code); {how}, then save_state again.")
    if "state.ckpt" in names:
        return ("an Accelerator.save_state directory (state.ckpt)",
                f"Load it with accelerator.load_state({directory!r}); a Trainer resumes from a .ckpt file.")
    if "model.safetensors" in names or "model.safetensors.index.json" in names:
        return ("plain safetensors weights (save_model)",
                "Load them into the model (README: Plain weights) and start a new fit.")
    shown = _few(names) if names else "nothing"
    return (f"{shown}", "Pass a checkpoint file, or a directory written by save_state or a sharded strategy.")


def _few(names: list[Any], limit: int = 6) -> str:
    shown = ", ".join(str(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")

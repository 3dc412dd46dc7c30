"""Checkpoints: a directory, never a pickle.

  model.safetensors      weights (the model's state_dict)
  config.json            ModelConfig.to_dict()
  training.json          step, tokens seen, seed, data position, validation history, versions,
                         optimizer scalars
  optimizer.safetensors  Adam moments per parameter name (for `ctrt train --resume`), optional

Saving is atomic: everything is written to a temporary sibling directory that is then renamed.

Checkpoints written before `aux_loss` existed (config.json without it) trained conv and
dilated_conv with both compression losses and a decoder g tied to the compressor (the transposed
strided convolution with the compressor's own weight). They load as aux_loss="both" ("attention"
for compressors without parameters, where it changes nothing) with each untied decoder set to a
copy of that weight, which is exactly the g they trained with; inference never uses g.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import safetensors
import safetensors.torch
import torch

from compressive_rt.ct_reference.config import LEGACY_AUX_LOSS, PARAMETRIC_COMPRESS_FNS, ModelConfig
from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.errors import ConfigError, CtrtError

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
TRAINING_FILE = "training.json"
OPTIMIZER_FILE = "optimizer.safetensors"
_ADAM_TENSORS = ("exp_avg", "exp_avg_sq")


def save_checkpoint(path: str | Path, model: CompressiveTransformer, training: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None) -> Path:
    """Write the checkpoint directory `path` atomically (replacing an old one) and return it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        weights = {name: t.detach().contiguous() for name, t in model.state_dict().items()}
        safetensors.torch.save_file(weights, str(tmp / WEIGHTS_FILE))
        _write_json(tmp / CONFIG_FILE, model.config.to_dict())
        training = dict(training or {})
        training["versions"] = {"python": sys.version.split()[0], "torch": torch.__version__,
                                "safetensors": safetensors.__version__}
        if optimizer is not None:
            tensors, training["optimizer"] = _optimizer_state(model, optimizer)
            safetensors.torch.save_file(tensors, str(tmp / OPTIMIZER_FILE))
        _write_json(tmp / TRAINING_FILE, training)
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            path.rename(old)
        tmp.rename(path)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_model(path: str | Path) -> tuple[CompressiveTransformer, dict]:
    """The model of a checkpoint directory (eval mode) and its training metadata.

    Raises CtrtError naming the file for a missing directory or file, a corrupt weights file,
    a bad config, or weights whose names or shapes do not fit the config.
    """
    path = Path(path)
    config, legacy = _read_config(path)
    weights = _read_safetensors(path / WEIGHTS_FILE)
    model = CompressiveTransformer(config)
    if legacy and model.ae_decoders is not None:
        weights = _with_tied_decoders(weights, model)
    _check_tensors(path / WEIGHTS_FILE, expected=model.state_dict(), actual=weights)
    model.load_state_dict(weights)
    model.eval()
    metadata = _read_json(path / TRAINING_FILE) if (path / TRAINING_FILE).is_file() else {}
    return model, metadata


def load_config(path: str | Path) -> ModelConfig:
    return _read_config(Path(path))[0]


def _read_config(path: Path) -> tuple[ModelConfig, bool]:
    """The checkpoint's config and whether it predates the aux_loss field (module docstring)."""
    if not path.is_dir():
        raise CtrtError(f"checkpoint directory {path} "
                        f"{'is not a directory' if path.exists() else 'does not exist'}")
    data = _read_json(path / CONFIG_FILE)
    legacy = "aux_loss" not in data
    if legacy:
        parametric = data.get("compress_fn", ModelConfig.compress_fn) in PARAMETRIC_COMPRESS_FNS
        data = {**data, "aux_loss": LEGACY_AUX_LOSS if parametric else "attention"}
    try:
        return ModelConfig.from_dict(data), legacy
    except (ConfigError, TypeError) as exc:
        raise CtrtError(f"{path / CONFIG_FILE}: {exc}") from exc


def _with_tied_decoders(weights: dict[str, torch.Tensor],
                        model: CompressiveTransformer) -> dict[str, torch.Tensor]:
    """Weights of a checkpoint from before aux_loss, with each decoder g the tied one it
    trained with: the compressor's strided weight, used as a transposed convolution (no bias).
    Names already present are kept; a missing compressor is left for _check_tensors to name."""
    weights = dict(weights)
    for i, decoder in enumerate(model.ae_decoders):
        compressor = weights.get(f"compressors.{i}.strided.weight")  # [d, d, c]
        if compressor is None:
            continue
        weights.setdefault(f"ae_decoders.{i}.transposed.weight", compressor.clone())
        if decoder.transposed.bias is not None:
            weights.setdefault(f"ae_decoders.{i}.transposed.bias",
                               torch.zeros_like(decoder.transposed.bias))
    return weights


def load_optimizer(path: str | Path, model: CompressiveTransformer,
                   optimizer: torch.optim.Optimizer, scalars: dict) -> None:
    """Restore Adam moments saved by save_checkpoint into `optimizer` (built over
    model.parameters() in order)."""
    file = Path(path) / OPTIMIZER_FILE
    tensors = _read_safetensors(file)
    state = optimizer.state_dict()
    for index, (name, param) in enumerate(model.named_parameters()):
        if f"{name}.exp_avg" not in tensors:
            continue
        entry = {key: tensors[f"{name}.{key}"] for key in _ADAM_TENSORS}
        for key, value in entry.items():
            if value.shape != param.shape:
                raise CtrtError(f"{file}: {name}.{key} has shape {tuple(value.shape)}, "
                                f"expected {tuple(param.shape)}")
        entry["step"] = torch.tensor(float(scalars["steps"][name]))
        state["state"][index] = entry
    for group, saved in zip(state["param_groups"], scalars["param_groups"]):
        group.update(saved)
    optimizer.load_state_dict(state)


def checkpoint_sha256(path: str | Path) -> str:
    """Identity of a checkpoint for export manifests: sha256 over the weights file bytes and
    the canonical JSON of its config."""
    path = Path(path)
    config = load_config(path)
    digest = hashlib.sha256()
    weights = path / WEIGHTS_FILE
    try:
        with open(weights, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise CtrtError(f"cannot read {weights}: {exc.strerror}") from exc
    digest.update(json.dumps(config.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()


def _optimizer_state(model: CompressiveTransformer,
                     optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = optimizer.state_dict()
    tensors, steps = {}, {}
    for index, (name, _) in enumerate(model.named_parameters()):
        entry = state["state"].get(index)
        if not entry:
            continue
        for key in _ADAM_TENSORS:
            tensors[f"{name}.{key}"] = entry[key].contiguous()
        steps[name] = int(entry["step"])
    groups = [{k: v for k, v in group.items() if k != "params"} for group in state["param_groups"]]
    return tensors, {"steps": steps, "param_groups": groups}


def _check_tensors(file: Path, expected: dict[str, torch.Tensor],
                   actual: dict[str, torch.Tensor]) -> None:
    problems = [f"missing {name} (expected shape {tuple(expected[name].shape)})"
                for name in sorted(set(expected) - set(actual))]
    problems += [f"unexpected {name} (shape {tuple(actual[name].shape)})"
                 for name in sorted(set(actual) - set(expected))]
    problems += [f"{name} has shape {tuple(actual[name].shape)}, expected "
                 f"{tuple(expected[name].shape)}"
                 for name in sorted(set(expected) & set(actual))
                 if actual[name].shape != expected[name].shape]
    if problems:
        raise CtrtError(f"{file} does not fit {file.parent / CONFIG_FILE}: " + "; ".join(problems))


def _read_safetensors(file: Path) -> dict[str, torch.Tensor]:
    if not file.is_file():
        raise CtrtError(f"{file} is missing")
    try:
        return safetensors.torch.load_file(str(file))
    except (safetensors.SafetensorError, OSError, ValueError) as exc:
        raise CtrtError(f"{file} is not a readable safetensors file ({exc})") from exc


def _read_json(file: Path) -> dict:
    if not file.is_file():
        raise CtrtError(f"{file} is missing")
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError) as exc:
        raise CtrtError(f"{file} is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise CtrtError(f"{file} must hold a JSON object")
    return data


def _write_json(file: Path, data: dict) -> None:
    file.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")

"""Import checkpoints of other Compressive Transformer implementations.

compressive-transformer-pytorch (PyPI 0.4.0, lucidrains): every constructor argument maps to a
ModelConfig field or is refused by name; weights are renamed key by key and every key and shape
is checked. The fixed parts of that architecture map to these config values:

  pre-LN blocks whose memories hold LN(h)        store_normed_memory=True
  a learned per-head position table [H, L+M+C, dh], shared by the layers, indexed by its
  relative shift from the end by distance and memory fill     position_encoding="learned"
  attention q.k/sqrt(dh) + q.P/sqrt(dh), no u/v, to_out with a bias    attn_out_bias=True
  feed-forward 4 * dim with exact GELU           d_ff=4*dim, ff_activation="gelu"
  no embedding scale, no final LayerNorm, untied output head with a bias
  conv compression kernel = stride = cmem_ratio with a bias   compress_fn="conv",
                                                               compress_bias=True
Dropouts and the reconstruction-loss weight only act in training and are ignored. The package's
input `mask` argument is not part of the import (inference here attends to every token).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import torch

from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.errors import ConfigError, CtrtError

LUCIDRAINS = "compressive-transformer-pytorch"
SOURCES = (LUCIDRAINS,)

# Arguments that only change training; they are accepted and have no effect on inference.
_TRAINING_ONLY = ("attn_dropout", "ff_dropout", "attn_layer_dropout",
                  "reconstruction_attn_dropout", "reconstruction_loss_weight")
_REQUIRED = ("num_tokens", "dim", "seq_len", "depth")
_OPTIONAL = ("emb_dim", "memory_layers", "enhanced_recurrence", "mem_len", "cmem_len",
             "cmem_ratio", "heads", "gru_gated_residual", "mogrify_gru", "ff_glu")


class ImportCheckpointError(CtrtError):
    """A checkpoint that cannot be imported; the message names the argument or weight."""


def lucidrains_config(args: Mapping) -> ModelConfig:
    """ModelConfig for CompressiveTransformer(**args) of compressive-transformer-pytorch."""
    unknown = sorted(set(args) - set(_REQUIRED) - set(_OPTIONAL) - set(_TRAINING_ONLY))
    if unknown:
        raise ImportCheckpointError(
            f"{LUCIDRAINS} argument(s) not supported: {', '.join(unknown)} (supported: "
            f"{', '.join(_REQUIRED + _OPTIONAL)}; ignored at inference: "
            f"{', '.join(_TRAINING_ONLY)})")
    missing = [name for name in _REQUIRED if args.get(name) is None]
    if missing:
        raise ImportCheckpointError(f"{LUCIDRAINS} argument(s) missing: {', '.join(missing)}")
    dim, seq_len, depth = int(args["dim"]), int(args["seq_len"]), int(args["depth"])
    ratio = int(args.get("cmem_ratio", 4))
    mem_len = int(args["mem_len"]) if args.get("mem_len") is not None else seq_len
    cmem_len = int(args["cmem_len"]) if args.get("cmem_len") is not None else mem_len // ratio
    emb_dim = args.get("emb_dim")
    memory_layers = args.get("memory_layers")
    if memory_layers is not None:
        bad = [layer for layer in memory_layers if not 1 <= int(layer) <= depth]
        if bad or not memory_layers:
            raise ImportCheckpointError(
                f"{LUCIDRAINS} argument memory_layers={list(memory_layers)}: layers are "
                f"numbered 1..depth={depth}")
        memory_layers = sorted({int(layer) - 1 for layer in memory_layers})
        if memory_layers == list(range(depth)):
            memory_layers = None
    gru = bool(args.get("gru_gated_residual", True))
    residual = ("mogrifier_gru" if args.get("mogrify_gru", False) else "gru") if gru else "add"
    fields = dict(
        vocab_size=int(args["num_tokens"]), n_layers=depth, d_model=dim,
        n_heads=int(args.get("heads", 8)), d_ff=4 * dim, seg_len=seq_len, mem_len=mem_len,
        cmem_len=cmem_len, compress_rate=ratio, compress_fn="conv" if cmem_len > 0 else "none",
        compress_bias=cmem_len > 0, dropout=0.0, pre_norm=True, tie_embeddings=False,
        layer_norm_eps=1e-5, position_encoding="learned",
        embed_dim=None if emb_dim is None or int(emb_dim) == dim else int(emb_dim),
        scale_embeddings=False, final_norm=False, lm_head_bias=True, attn_out_bias=True,
        ff_activation="gelu", ff_glu=bool(args.get("ff_glu", False)), residual=residual,
        store_normed_memory=True, memory_layers=memory_layers,
        enhanced_recurrence=bool(args.get("enhanced_recurrence", True)))
    try:
        return ModelConfig(**fields)
    except ConfigError as exc:
        raise ImportCheckpointError(
            f"{LUCIDRAINS} arguments cannot be run here ({exc}; names here: seg_len = seq_len, "
            f"compress_rate = cmem_ratio, n_heads = heads, d_model = dim)") from None


def _lucidrains_names(config: ModelConfig, layer: int) -> dict[str, str]:
    """Our parameter name -> theirs, for one layer."""
    gated = config.residual != "add"
    names: dict[str, str] = {}
    for ours, theirs in (("attn_gate", "attn_layers"), ("ff_gate", "ff_layers")):
        base = f"{theirs}.{layer}.fn."  # Residual or GRUGating around PreNorm
        names[f"layers.{layer}.{'norm1' if ours == 'attn_gate' else 'norm2'}"] = base + "norm"
        if gated:
            names[f"layers.{layer}.{ours}.gru"] = f"{theirs}.{layer}.gru"
            if config.residual == "mogrifier_gru":
                for gate, their_gate in (("gate_x", "Q"), ("gate_h", "R")):
                    for k in (0, 1):
                        names[f"layers.{layer}.{ours}.mogrifier.{gate}.{k}"] = \
                            f"{theirs}.{layer}.mogrify.{their_gate}.0.{k}"
    attn, ff = f"attn_layers.{layer}.fn.fn.", f"ff_layers.{layer}.fn.fn."
    names[f"layers.{layer}.attn.q_proj"] = attn + "to_q"
    names[f"layers.{layer}.attn.out_proj"] = attn + "to_out"
    names[f"layers.{layer}.ff.up"] = ff + "w1"
    names[f"layers.{layer}.ff.down"] = ff + "w2"
    if config.compress_fn == "conv":
        names[f"compressors.{layer}.strided"] = attn + "compress_mem_fn.conv"
    return names


def _module_names(state: Mapping[str, torch.Tensor]) -> dict[str, str]:
    """Accept the older mogrifier layout (Q.0.weight) as well as mogrifier 0.0.5 (Q.0.0.weight)."""
    renamed = {}
    for key in state:
        parts = key.split(".")
        if "mogrify" in parts and parts[-3] in ("Q", "R") and parts[-2] in ("0", "1"):
            parts = parts[:-2] + ["0"] + parts[-2:]
        renamed[".".join(parts)] = key
    return renamed


def lucidrains_state_dict(model: CompressiveTransformer, state: Mapping[str, torch.Tensor],
                          source: str = "state_dict") -> dict[str, torch.Tensor]:
    """Their state_dict -> a state_dict for `model`; every key and shape is checked."""
    if state and all(key.startswith("net.") for key in state):  # AutoregressiveWrapper
        state = {key[len("net."):]: value for key, value in state.items()}
    by_name = _module_names(state)
    config = model.config
    expected = model.state_dict()
    prefixes = {"embed": "token_emb", "embed_in": "to_model_dim", "embed_out": "to_logits.0",
                "lm_head": "to_logits.1"}
    for layer in range(config.n_layers):
        prefixes.update(_lucidrains_names(config, layer))
    ours: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    origin: dict[str, str] = {}

    def take(name: str, their_key: str) -> torch.Tensor:
        if their_key not in by_name:
            raise ImportCheckpointError(f"{source}: no weight {their_key!r} (needed for {name}; "
                                        f"do the arguments match the checkpoint?)")
        used.add(by_name[their_key])
        origin[name] = by_name[their_key]
        return state[by_name[their_key]]

    for name in expected:
        if name == "pos_emb":
            ours[name] = take(name, "pos_emb")
            continue
        module, _, tensor = name.rpartition(".")
        if module.endswith(".attn.k_proj") or module.endswith(".attn.v_proj"):
            kv_module = prefixes[module.rsplit(".", 1)[0] + ".q_proj"].replace("to_q", "to_kv")
            halves = take(name, f"{kv_module}.{tensor}").chunk(2, dim=0)
            ours[name] = halves[0 if module.endswith("k_proj") else 1]
            continue
        if module not in prefixes:
            raise ImportCheckpointError(f"internal: no {LUCIDRAINS} name for {name}")
        ours[name] = take(name, f"{prefixes[module]}.{tensor}")
    unused = sorted(set(state) - used)
    if unused:
        raise ImportCheckpointError(
            f"{source}: weight(s) {', '.join(unused)} are not part of a model with these "
            f"arguments (check memory_layers, gru_gated_residual, mogrify_gru, emb_dim, ff_glu)")
    for name, tensor in ours.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            size = "half of " if name.endswith(("k_proj.weight", "v_proj.weight")) else ""
            raise ImportCheckpointError(
                f"{source}: weight {origin[name]!r} has {size}shape {tuple(tensor.shape)}, the "
                f"arguments give {tuple(expected[name].shape)}")
        ours[name] = tensor.detach().to(torch.float32).contiguous()
    return ours


def import_lucidrains(state: Mapping[str, torch.Tensor], args: Mapping,
                      source: str = "state_dict") -> CompressiveTransformer:
    """Our model (eval mode) from their state_dict and constructor arguments."""
    config = lucidrains_config(args)
    model = CompressiveTransformer(config)
    model.load_state_dict(lucidrains_state_dict(model, state, source))
    return model.eval()


def lucidrains_args(net: torch.nn.Module) -> dict:
    """The constructor arguments of a live compressive_transformer_pytorch model."""
    if hasattr(net, "net") and hasattr(net.net, "memory_layers"):  # AutoregressiveWrapper
        net = net.net
    first_attn = net.attn_layers[0]
    gated = hasattr(first_attn, "gru")
    attn = first_attn.fn.fn
    ff = net.ff_layers[0].fn.fn
    dim = net.token_emb.embedding_dim if isinstance(net.to_model_dim, torch.nn.Identity) \
        else net.to_model_dim.out_features
    if ff.w2.in_features != 4 * dim or not isinstance(ff.act, torch.nn.GELU):
        raise ImportCheckpointError(f"{LUCIDRAINS} model with a feed-forward other than "
                                    f"GELU of width 4 * dim is not supported")
    return {
        "num_tokens": net.token_emb.num_embeddings, "dim": dim,
        "emb_dim": net.token_emb.embedding_dim, "depth": net.depth, "seq_len": net.seq_len,
        "mem_len": attn.mem_len, "cmem_len": attn.cmem_len, "cmem_ratio": attn.cmem_ratio,
        "heads": attn.heads, "memory_layers": list(net.memory_layers),
        "enhanced_recurrence": bool(net.enhanced_recurrence), "gru_gated_residual": gated,
        "mogrify_gru": gated and first_attn.mogrify is not None, "ff_glu": bool(ff.glu),
    }


def import_lucidrains_model(net: torch.nn.Module) -> CompressiveTransformer:
    """Our model (eval mode) from a live compressive_transformer_pytorch CompressiveTransformer
    (or its AutoregressiveWrapper)."""
    state = net.state_dict()
    return import_lucidrains(state, lucidrains_args(net), source=type(net).__name__)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A `.pt` state_dict, read without unpickling code (torch.load(weights_only=True))."""
    path = Path(path)
    if not path.is_file():
        raise ImportCheckpointError(f"state_dict file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is the user's to fix
        raise ImportCheckpointError(f"{path}: not a readable torch state_dict ({exc})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(
            state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(
            isinstance(v, torch.Tensor) for v in state.values()):
        raise ImportCheckpointError(f"{path}: expected a dict of tensor names to tensors "
                                    f"(model.state_dict()), got {type(state).__name__}")
    return dict(state)


def read_args(path: str | Path) -> dict:
    """Constructor arguments from a JSON file holding one object."""
    path = Path(path)
    try:
        args = json.loads(path.read_text())
    except OSError as exc:
        raise ImportCheckpointError(f"cannot read {path}: {exc.strerror}") from None
    except ValueError as exc:  # JSONDecodeError, or UnicodeDecodeError for binary files
        raise ImportCheckpointError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(args, dict):
        raise ImportCheckpointError(f"{path}: expected a JSON object of constructor arguments")
    return args


def import_checkpoint(source: str, state_dict_path: str | Path, args_path: str | Path,
                      out: str | Path) -> Path:
    """`ctrt import-checkpoint`: write a checkpoint directory of this project; returns it."""
    from compressive_rt.ct_reference.checkpoint import save_checkpoint

    if source not in SOURCES:
        raise ImportCheckpointError(f"unknown source {source!r}; choose one of "
                                    f"{', '.join(SOURCES)}")
    state_dict_path = Path(state_dict_path)
    args = read_args(args_path)
    model = import_lucidrains(read_state_dict(state_dict_path), args, source=str(state_dict_path))
    return save_checkpoint(out, model, training={
        "imported_from": {"source": source, "state_dict": str(state_dict_path),
                          "arguments": args}})

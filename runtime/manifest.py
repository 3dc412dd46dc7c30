"""manifest.json: what an engine directory holds. Its structure, its writing (export,
build-engine) and its reading (checked before any load) live here, torch-free: the exporter
passes the versions of its own libraries in."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from compressive_rt.errors import EngineError
from compressive_rt.runtime.contract import EntryPoint, entry_points
from compressive_rt.runtime.files import atomic_write

MANIFEST_NAME = "manifest.json"
WEIGHTS_NAME = "weights.bin"  # every graph's initializers, each stored once (ONNX external data)
FORMAT = "compressive-rt-engine"
FORMAT_VERSION = 3  # 3: contract v3, state per layer (2: batch-first packed, 1: layer-first)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entry(path: Path) -> dict:
    """How the manifest records a file it vouches for (graphs, weights)."""
    return {"file": path.name, "sha256": sha256_file(path), "bytes": path.stat().st_size}


def write_manifest(engine_dir: Path, manifest: dict) -> None:
    """engine_dir/manifest.json, replaced atomically (never a half-written file)."""
    text = json.dumps(manifest, indent=2, sort_keys=False) + "\n"
    atomic_write(engine_dir / MANIFEST_NAME, lambda f: f.write(text.encode()))


def new_manifest(config: dict, graphs: dict, *, opset: int, exporter: str, versions: dict,
                 checkpoint: dict, export_seconds: float) -> dict:
    """The manifest of freshly exported fp32 graphs. `graphs` is what the graph writer returns:
    {"weights": file_entry + tensor index, "entry_points": {name: file_entry + initializers}};
    each entry point also records its tensors, for the load-time contract check."""
    contract = entry_points(config)
    return {
        "format": FORMAT, "format_version": FORMAT_VERSION,
        "config": config,
        "opset": opset, "precision": "fp32", "exporter": exporter,
        "versions": versions,
        "checkpoint": checkpoint,
        "weights": graphs["weights"],
        "entry_points": {name: {**entry, **describe_entry(contract[name])}
                         for name, entry in graphs["entry_points"].items()},
        "export_seconds": export_seconds,
    }


def record_graphs(manifest: dict, graphs: dict) -> None:
    """Point the manifest at rewritten graphs (converted, quantized): their weights file and
    each graph's file entry; the tensors of each entry point are unchanged."""
    manifest["weights"] = graphs["weights"]
    for name, entry in graphs["entry_points"].items():
        manifest["entry_points"][name].update(entry)


@dataclass(frozen=True)
class Manifest:
    engine_dir: Path
    data: dict
    contract: dict[str, EntryPoint]

    @property
    def config(self) -> dict:
        return self.data["config"]

    def graph_path(self, entry: str) -> Path:
        return self.engine_dir / self.data["entry_points"][entry]["file"]

    @property
    def weights_path(self) -> Path:
        """The weights file the graphs share."""
        return self.engine_dir / self.data["weights"]["file"]


def describe_entry(entry: EntryPoint) -> dict:
    return {"inputs": [t.to_dict() for t in entry.inputs],
            "outputs": [t.to_dict() for t in entry.outputs]}


def load_manifest(engine_dir: Path | str, verify_hashes: bool = True) -> Manifest:
    """Read and check manifest.json against the contract and the graph files beside it."""
    engine_dir = Path(engine_dir)
    path = engine_dir / MANIFEST_NAME
    if not engine_dir.is_dir():
        raise EngineError(f"engine directory {engine_dir} does not exist")
    if not path.is_file():
        raise EngineError(f"{path} is missing: export a checkpoint there with `ctrt export`")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EngineError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise EngineError(f"{path} is not a compressive-rt manifest (format != {FORMAT!r})")
    if data.get("format_version") != FORMAT_VERSION:
        raise EngineError(f"{path} has format_version {data.get('format_version')!r}; this "
                          f"runtime reads version {FORMAT_VERSION} (contract v3, state per layer): "
                          f"re-export the checkpoint with `ctrt export CHECKPOINT "
                          f"{engine_dir}`")
    try:
        contract = entry_points(data["config"])
    except (KeyError, TypeError) as exc:
        raise EngineError(f"{path}: config is incomplete ({exc})") from None
    listed = data.get("entry_points", {})
    for name, entry in contract.items():
        if name not in listed:
            raise EngineError(f"{path} lists no {name!r} graph")
        if {k: listed[name].get(k) for k in ("inputs", "outputs")} != describe_entry(entry):
            raise EngineError(f"{path}: the {name!r} tensors do not match this runtime's engine "
                              f"contract for the config: re-export the checkpoint")
        graph = engine_dir / listed[name]["file"]
        if not graph.is_file():
            raise EngineError(f"{graph} is missing (listed in {path})")
        if verify_hashes and sha256_file(graph) != listed[name]["sha256"]:
            raise EngineError(f"{graph} does not match the sha256 in {path}: the graph was "
                              f"changed or truncated after export")
    # Required: without the entry, the graphs' external weights would load unchecked.
    if not isinstance(data.get("weights"), dict):
        raise EngineError(f"{path} lists no weights file: re-export the checkpoint")
    _check_weights(engine_dir, data["weights"], path, verify_hashes)
    return Manifest(engine_dir=engine_dir, data=data, contract=contract)


def _check_weights(engine_dir: Path, weights: dict, manifest_path: Path,
                   verify_hashes: bool) -> None:
    """The weights file is there, whole and unchanged: checked before any graph is loaded."""
    path = engine_dir / weights["file"]
    if not path.is_file():
        raise EngineError(f"{path} is missing (the weights of every graph, listed in "
                          f"{manifest_path}): copy the whole engine directory or re-export")
    size = path.stat().st_size
    if size != weights["bytes"]:
        raise EngineError(f"{path} holds {size} bytes, {manifest_path} lists {weights['bytes']}: "
                          f"the weights file was truncated or replaced; re-export")
    if verify_hashes and sha256_file(path) != weights["sha256"]:
        raise EngineError(f"{path} does not match the sha256 in {manifest_path}: the weights "
                          f"were changed after export; re-export")

"""Sizes of an engine: the directory on disk, and peak resident memory (RSS) of a process that
scores with it, beside the weights and the state it holds.

Each peak RSS is measured in a fresh subprocess (VmHWM from /proc/self/status, Linux), so one
measurement never inherits another's allocations: the runtime child imports only the runtime
(never torch), the eager child only torch and the reference model. `memory_report` returns the
figures for the bench report; `python -m compressive_rt.benchmarks.memory` exports the default
config with random weights and prints the table.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

MIB = 1024**2
SCORED_TOKENS = 300  # per stream: two segments and a partial one at the default L=128

_PEAK_RSS = """
def peak_rss_mib():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
"""

# Opens a Session and scores SCORED_TOKENS per stream, then decodes one token per stream.
_RUNTIME_CHILD = _PEAK_RSS + """
import json, sys
import numpy as np
import onnxruntime
from compressive_rt.runtime.session import Session
engine_dir, streams, tokens, threads = sys.argv[1], *map(int, sys.argv[2:5])
baseline = peak_rss_mib()  # interpreter + numpy + onnxruntime + the runtime's imports
session = Session(engine_dir, max_streams=streams, threads=threads, prepack=sys.argv[5])
ids = [session.add_stream() for _ in range(streams)]
text = np.arange(tokens) % 256
session.feed({stream: text for stream in ids})
session.feed({stream: text[:1] for stream in ids})
print(json.dumps({"baseline_mib": baseline, "peak_mib": peak_rss_mib()}))
"""

# Builds the model with random weights and scores the same tokens with the eager reference.
_EAGER_CHILD = _PEAK_RSS + """
import json, sys
import torch
from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.ct_reference.model import CompressiveTransformer
config = ModelConfig.from_dict(json.loads(sys.argv[1]))
streams, tokens, threads = map(int, sys.argv[2:5])
torch.set_num_threads(threads)
baseline = peak_rss_mib()  # interpreter + torch
model = CompressiveTransformer(config).eval()
text = torch.arange(tokens).remainder(256).repeat(streams, 1)  # [B, tokens]
with torch.no_grad():
    model.score(text)
print(json.dumps({"baseline_mib": baseline, "peak_mib": peak_rss_mib()}))
"""


def _run_child(code: str, *args: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                            text=True, timeout=600)
    if result.returncode != 0:
        raise RuntimeError(f"memory measurement failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def runtime_peak_rss(engine_dir: Path | str, streams: int = 1, tokens: int = SCORED_TOKENS,
                     threads: int = 1, prepack: str = "all") -> dict:
    """{"baseline_mib", "peak_mib"} of a fresh process that scores with the runtime."""
    return _run_child(_RUNTIME_CHILD, str(engine_dir), str(streams), str(tokens), str(threads),
                      prepack)


def eager_peak_rss(config: dict, streams: int = 1, tokens: int = SCORED_TOKENS,
                   threads: int = 1) -> dict:
    """{"baseline_mib", "peak_mib"} of a fresh process that scores with eager PyTorch."""
    return _run_child(_EAGER_CHILD, json.dumps(config), str(streams), str(tokens), str(threads))


def directory_bytes(path: Path | str) -> int:
    return sum(f.stat().st_size for f in Path(path).iterdir() if f.is_file())


def state_bytes(config: dict, streams: int = 1) -> int:
    """The state a Session holds for `streams` streams: two banks (ping-pong) of the memory
    state and one of the partial segment."""
    import numpy as np

    from compressive_rt.runtime.contract import MEMORY_STATE, Dims, state_specs

    total = 0
    for spec in state_specs(Dims.from_config(config)).values():
        size = int(np.prod(spec.concrete_shape(streams))) * np.dtype(spec.dtype).itemsize
        total += size * (2 if spec.name in MEMORY_STATE else 1)
    return total


def memory_report(engine_dir: Path | str, threads: int = 1, streams: tuple[int, ...] = (1, 8),
                  eager: bool = True) -> dict:
    """Engine directory size, weights and state sizes, and peak RSS of the runtime (and of
    eager PyTorch) scoring SCORED_TOKENS per stream, for each stream count; sizes in MiB. The
    runtime is measured with its default prepacking ("all", fastest) and with "none" (one copy
    of the weights)."""
    manifest = json.loads((Path(engine_dir) / "manifest.json").read_text())
    config = manifest["config"]
    weights = manifest["weights"]["bytes"]
    report = {"engine_dir_mib": directory_bytes(engine_dir) / MIB,
              "weights_file_mib": weights / MIB, "precision": manifest["precision"],
              "scored_tokens": SCORED_TOKENS, "runs": []}
    for count in streams:
        run = {"streams": count, "state_mib": state_bytes(config, count) / MIB,
               "runtime": runtime_peak_rss(engine_dir, count, threads=threads),
               "runtime_no_prepack": runtime_peak_rss(engine_dir, count, threads=threads,
                                                      prepack="none")}
        if eager:
            run["eager"] = eager_peak_rss(config, count, threads=threads)
        report["runs"].append(run)
    return report


def format_report(report: dict, parameter_mib: float | None = None) -> str:
    lines = [f"engine directory {report['engine_dir_mib']:.1f} MiB, weights file "
             f"{report['weights_file_mib']:.1f} MiB ({report['precision']})"]
    if parameter_mib is not None:
        lines[0] += (f", fp32 parameters {parameter_mib:.1f} MiB (directory / parameters "
                     f"{report['engine_dir_mib'] / parameter_mib:.2f}x)")
    lines.append(f"peak RSS scoring {report['scored_tokens']} tokens per stream, then one "
                 f"decode step (MiB; baseline = the process before loading anything):")
    lines.append(f"{'streams':>8} {'state':>8} {'runtime':>9} {'(base)':>8} "
                 f"{'no prepack':>11} {'eager':>9} {'(base)':>8}")
    for run in report["runs"]:
        eager = run.get("eager", {"peak_mib": float("nan"), "baseline_mib": float("nan")})
        lines.append(f"{run['streams']:>8} {run['state_mib']:>8.1f} "
                     f"{run['runtime']['peak_mib']:>9.1f} {run['runtime']['baseline_mib']:>8.1f} "
                     f"{run['runtime_no_prepack']['peak_mib']:>11.1f} "
                     f"{eager['peak_mib']:>9.1f} {eager['baseline_mib']:>8.1f}")
    return "\n".join(lines)


def main() -> None:
    import argparse
    import tempfile

    import torch

    from compressive_rt.benchmarks.engines import export_engine
    from compressive_rt.ct_reference.config import ModelConfig
    from compressive_rt.ct_reference.model import CompressiveTransformer

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine-dir", help="measure this engine directory instead of "
                                             "exporting the default config")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    parameter_mib = None
    with tempfile.TemporaryDirectory() as scratch:
        engine_dir = args.engine_dir
        if engine_dir is None:
            torch.manual_seed(0)
            model = CompressiveTransformer(ModelConfig()).eval()
            parameter_mib = sum(p.numel() * p.element_size() for p in model.parameters()) / MIB
            engine_dir = export_engine(model, Path(scratch) / "engine")
        print(format_report(memory_report(engine_dir, threads=args.threads), parameter_mib))


if __name__ == "__main__":
    main()

"""Quality experiment (issue 14): does compression pay at this project's scale?

Trains the `tiny` preset for the same token budget with each compression function of the
paper's Table 5 (conv with attention reconstruction, conv with auto-encoding, dilated conv,
most-used, mean pool, max pool) and a Transformer-XL whose attention span equals the
compressive model's (memory M + C, no compression), then reports held-out bits per byte on the
default corpus beside the paper's enwik8 ordering, and scores one long held-out document with the
memory carried across segments vs reset every segment (what the memory is worth).

The compressive models use C = 64 (the preset has 32) so that the Transformer-XL's memory
M + C = 128 is a whole number of segments, which the memory update needs.

    python -m compressive_rt.benchmarks.quality --steps 100 --seeds 2 --jobs 4 \
        --out bench_out/quality
    ctrt bench --quality --steps 100 --seeds 2 --jobs 4   # the same, into <--out>/quality

README's quality subsection has the result of the first command on the project's machine.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from compressive_rt.benchmarks.jobs import run_jobs
from compressive_rt.ct_reference.config import PRESETS, ModelConfig
from compressive_rt.errors import CtrtError

# Rae et al. 2019, Table 5: enwik8 test bits per character (BPTT: 0.996, not run here).
PAPER_TABLE5 = {"conv+attention": 0.973, "dilated_conv": 0.977, "most_used": 0.980,
                "mean_pool": 0.982, "conv+autoencoding": 0.984, "max_pool": 0.986}
TRANSFORMER_XL = "transformer_xl"
# Config changes of each variant; every compressive one keeps the base config's M and C.
VARIANTS = {
    "conv+attention": {"compress_fn": "conv", "aux_loss": "attention"},
    "conv+autoencoding": {"compress_fn": "conv", "aux_loss": "autoencoding"},
    "dilated_conv": {"compress_fn": "dilated_conv", "aux_loss": "attention"},
    "most_used": {"compress_fn": "most_used"},
    "mean_pool": {"compress_fn": "mean_pool"},
    "max_pool": {"compress_fn": "max_pool"},
    TRANSFORMER_XL: {"compress_fn": "none"},  # memory M + C, no cmem (variant_config)
}
QUALITY_BASE = PRESETS["tiny"].replace(cmem_len=64)


@dataclass(frozen=True)
class QualitySettings:
    steps: int = 60  # optimizer steps per run; tokens per run = steps * batch * seg_len
    seeds: int = 1
    batch: int = 4
    lr: float = 1e-3
    warmup_steps: int | None = None  # None: steps // 10
    val_segments: int = 16  # held-out validation: segments per stream
    val_batch: int = 4
    long_doc_segments: int = 64  # the long held-out document, in segments
    jobs: int = 1  # runs trained at once, each in its own process with one torch thread


def variant_config(base: ModelConfig, name: str) -> ModelConfig:
    """The config of one variant; the Transformer-XL gets memory M + C and no cmem."""
    if name == TRANSFORMER_XL:
        span = base.mem_len + base.cmem_len
        if span % base.seg_len:
            raise CtrtError(f"the Transformer-XL needs memory M + C = {span} to be a multiple "
                            f"of seg_len={base.seg_len}; choose cmem_len so that it is (e.g. "
                            f"cmem_len={base.cmem_len + base.seg_len - span % base.seg_len})")
        return base.replace(compress_fn="none", cmem_len=0, mem_len=span, aux_loss="attention")
    return base.replace(**VARIANTS[name])


def long_document(documents: list[bytes], segments: int, seg_len: int):
    """The longest held-out document, cut to `segments` whole segments (+1 target byte)."""
    import numpy as np

    from compressive_rt.ct_reference.data import held_out_indices, split_documents

    if len(documents) == 1:
        candidates = [split_documents(documents)[1].tobytes()]
    else:
        candidates = [documents[i] for i in sorted(held_out_indices(len(documents)))]
    document = max(candidates, key=len)
    usable = min(segments, (len(document) - 1) // seg_len)
    if usable < 2:
        raise CtrtError(f"the longest held-out document has {len(document)} bytes, too short for "
                        f"two segments of {seg_len}; use a corpus with longer documents")
    return np.frombuffer(document[:usable * seg_len + 1], dtype=np.uint8)


def score_long_document(model, document) -> dict:
    """Bits per byte of one document [n*L + 1] with memory carried vs reset every segment."""
    import numpy as np
    import torch
    import torch.nn.functional as F

    from compressive_rt.ct_reference.data import bits_per_byte

    seg_len = model.config.seg_len
    n_segments = (len(document) - 1) // seg_len
    # Row k is segment k with its targets, each scored from empty memory in one batch.
    rows = torch.from_numpy(np.stack([document[k * seg_len:(k + 1) * seg_len + 1]
                                      for k in range(n_segments)]).astype(np.int64))  # [n, L+1]
    with torch.no_grad():
        model.eval()
        logits = model(rows[:, :-1], model.init_memory(n_segments)).logits  # [n, L, V]
        reset_nats = F.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                     rows[:, 1:].reshape(-1)).item()
    return {"bytes": n_segments * seg_len, "carried_bpb": bits_per_byte(model, document, batch=1),
            "reset_bpb": reset_nats / math.log(2)}


def run_quality(settings: QualitySettings, out_dir: Path, base: ModelConfig = QUALITY_BASE,
                variants: tuple[str, ...] = tuple(VARIANTS), data: str | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Train and score every variant for every seed; write quality.json and quality.png to
    out_dir and return the results."""
    import torch

    from compressive_rt.ct_reference.data import read_documents

    if settings.steps < 1 or settings.seeds < 1:
        raise CtrtError(f"--steps and --seeds must be >= 1, got {settings.steps} and "
                        f"{settings.seeds}")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise CtrtError(f"unknown variant(s) {', '.join(unknown)}; choose from "
                        f"{', '.join(VARIANTS)}")
    configs = {name: variant_config(base, name) for name in variants}
    document = long_document(read_documents(data), settings.long_doc_segments, base.seg_len)
    results: dict = {
        "settings": asdict(settings), "base_config": base.to_dict(), "data": data or "default",
        "tokens_per_run": settings.steps * settings.batch * base.seg_len,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": 1 if settings.jobs > 1 else torch.get_num_threads(),
                    "torch": torch.__version__},
        "paper_table5_enwik8_bpc": PAPER_TABLE5, "variants": {}}
    runs = {(name, seed): None for name in configs for seed in range(settings.seeds)}
    job_args = [(name, configs[name], seed, settings, data, document) for name, seed in runs]
    for name, seed, run in run_jobs(_train_and_score, job_args, settings.jobs):
        runs[name, seed] = run
        _log_run(log, name, run)
    for name, config in configs.items():
        results["variants"][name] = summarize(
            name, config, [runs[name, seed] for seed in range(settings.seeds)])
    results["verdict"] = verdict(results["variants"])
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "quality.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / "quality.png")
    log(format_table(results))
    log(f"wrote {out_dir / 'quality.json'} and {out_dir / 'quality.png'}")
    return results


def _train_and_score(args: tuple) -> tuple[str, int, dict]:
    """One training run of one variant and seed, then its scores."""
    from compressive_rt.ct_reference.train import TrainOptions, train

    name, config, seed, settings, data, document = args
    warmup = settings.warmup_steps if settings.warmup_steps is not None else settings.steps // 10
    start = time.monotonic()
    outcome = train(TrainOptions(
        config=config, data=data, out=None, steps=settings.steps, batch=settings.batch,
        seed=seed, lr=settings.lr, warmup_steps=warmup, val_every=0,
        val_segments=settings.val_segments, val_batch=settings.val_batch, progress=False),
        log=lambda line: None)
    long_doc = score_long_document(outcome.model, document)
    return name, seed, {"seed": seed, "val_bpb": outcome.history[-1]["val_bpb"],
                        "seconds": round(time.monotonic() - start, 1), **long_doc}


def _log_run(log: Callable[[str], None], name: str, run: dict) -> None:
    log(f"{name} seed {run['seed']}: held-out {run['val_bpb']:.4f} bits/byte; long document "
        f"carried {run['carried_bpb']:.4f} / reset {run['reset_bpb']:.4f} "
        f"({run['seconds']:.0f} s)")


def summarize(name: str, config: ModelConfig, runs: list[dict]) -> dict:
    """Mean and spread (max - min) over seeds of each score."""
    def stats(key: str) -> dict:
        values = [run[key] for run in runs]
        return {"mean": round(statistics.fmean(values), 4),
                "spread": round(max(values) - min(values), 4)}

    return {"compress_fn": config.compress_fn, "aux_loss": config.aux_loss,
            "mem_len": config.mem_len, "cmem_len": config.cmem_len,
            "attention_span": config.mem_len + config.cmem_len,
            "temporal_range": config.temporal_range, "paper_bpc": PAPER_TABLE5.get(name),
            "val_bpb": stats("val_bpb"), "long_carried_bpb": stats("carried_bpb"),
            "long_reset_bpb": stats("reset_bpb"), "runs": runs}


def verdict(variants: dict) -> dict:
    """Our ordering beside the paper's, and which compression functions beat the
    Transformer-XL at equal span on held-out bits per byte (mean over seeds)."""
    ours = sorted((name for name in variants if name in PAPER_TABLE5),
                  key=lambda name: variants[name]["val_bpb"]["mean"])
    result = {"our_order": ours,
              "paper_order": sorted((n for n in PAPER_TABLE5 if n in variants),
                                    key=PAPER_TABLE5.get)}
    if TRANSFORMER_XL in variants:
        txl = variants[TRANSFORMER_XL]["val_bpb"]["mean"]
        result["beat_transformer_xl"] = {name: variants[name]["val_bpb"]["mean"] < txl
                                         for name in ours}
    return result


def format_table(results: dict) -> str:
    seeds = results["settings"]["seeds"]
    lines = [f"held-out bits/byte after {results['tokens_per_run']} training tokens per run, "
             f"{seeds} seed(s) (mean, spread = max - min); long document "
             f"{results['settings']['long_doc_segments']} segments",
             f"{'variant':<19} {'span':>4} {'range':>5} {'val bpb':>8} {'spread':>7} "
             f"{'carried':>8} {'reset':>7} {'paper bpc':>9}"]
    for name, row in results["variants"].items():
        paper = f"{row['paper_bpc']:.3f}" if row["paper_bpc"] is not None else "-"
        lines.append(f"{name:<19} {row['attention_span']:>4} {row['temporal_range']:>5} "
                     f"{row['val_bpb']['mean']:>8.4f} {row['val_bpb']['spread']:>7.4f} "
                     f"{row['long_carried_bpb']['mean']:>8.4f} "
                     f"{row['long_reset_bpb']['mean']:>7.4f} {paper:>9}")
    order = results["verdict"]
    lines.append(f"our order:   {' < '.join(order['our_order'])}")
    lines.append(f"paper order: {' < '.join(order['paper_order'])}")
    if "beat_transformer_xl" in order:
        winners = [name for name, won in order["beat_transformer_xl"].items() if won]
        lines.append("beat Transformer-XL at equal span: " + (", ".join(winners) or "none"))
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = results["variants"]
    names = [n for n in PAPER_TABLE5 if n in variants]  # the paper's order, best first
    fig, (ours_ax, paper_ax, memory_ax) = plt.subplots(1, 3, figsize=(16, 4.8))
    means = [variants[n]["val_bpb"]["mean"] for n in names]
    spreads = [variants[n]["val_bpb"]["spread"] / 2 for n in names]
    ours_ax.bar(names, means, yerr=spreads, color="tab:blue", capsize=3)
    if TRANSFORMER_XL in variants:
        ours_ax.axhline(variants[TRANSFORMER_XL]["val_bpb"]["mean"], color="tab:red",
                        linestyle="--", label="Transformer-XL, equal span")
        ours_ax.legend(loc="lower right")
    _zoom(ours_ax, means + [variants.get(TRANSFORMER_XL, {}).get("val_bpb", {}).get("mean",
                                                                                    means[0])])
    ours_ax.set_title(f"this project: held-out bits/byte\n({results['tokens_per_run']} tokens, "
                      f"{results['settings']['seeds']} seed(s), tiny preset)")
    paper = [PAPER_TABLE5[n] for n in names]
    paper_ax.bar(names, paper, color="tab:gray")
    _zoom(paper_ax, paper)
    paper_ax.set_title("paper Table 5: enwik8 test bits/char")
    memory_names = list(variants)
    carried = [variants[n]["long_carried_bpb"]["mean"] for n in memory_names]
    reset = [variants[n]["long_reset_bpb"]["mean"] for n in memory_names]
    x = range(len(memory_names))
    memory_ax.bar([i - 0.2 for i in x], carried, width=0.4, label="memory carried")
    memory_ax.bar([i + 0.2 for i in x], reset, width=0.4, label="memory reset every segment")
    memory_ax.set_xticks(list(x), memory_names)
    _zoom(memory_ax, carried + reset)
    memory_ax.legend(loc="best")
    memory_ax.set_title("long held-out document: bits/byte")
    for ax in (ours_ax, paper_ax, memory_ax):
        ax.tick_params(axis="x", rotation=40)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _zoom(ax, values: list[float]) -> None:
    """Bars that differ in the third digit are only readable with the axis cut near them."""
    low, high = min(values), max(values)
    margin = max(0.01, (high - low) * 0.5)
    ax.set_ylim(low - margin, high + margin)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m compressive_rt.benchmarks.quality",
                                     description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_quality_arguments(parser)
    defaults = QualitySettings()
    parser.add_argument("--batch", type=int, default=defaults.batch,
                        help=f"training streams per batch (default {defaults.batch})")
    parser.add_argument("--data", metavar="PATH", help="corpus (default: the standard "
                        "library's .py files)")
    parser.add_argument("--val-segments", type=int, default=defaults.val_segments,
                        help=f"held-out validation segments per stream, 4 streams (default "
                             f"{defaults.val_segments})")
    parser.add_argument("--long-doc-segments", type=int, default=defaults.long_doc_segments,
                        help=f"segments of the long held-out document (default "
                             f"{defaults.long_doc_segments})")
    parser.add_argument("--out", default="bench_out/quality", help="output folder "
                        "(default bench_out/quality)")
    args = parser.parse_args(argv)
    try:
        run_quality(QualitySettings(steps=args.steps, seeds=args.seeds, batch=args.batch,
                                    jobs=args.jobs, val_segments=args.val_segments,
                                    long_doc_segments=args.long_doc_segments),
                    Path(args.out), data=args.data)
    except CtrtError as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0


def add_quality_arguments(parser: argparse.ArgumentParser) -> None:
    """--steps and --seeds (shared with `ctrt bench --quality`)."""
    defaults = QualitySettings()
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"training steps per run (default {defaults.steps})")
    parser.add_argument("--seeds", type=int, default=defaults.seeds,
                        help=f"seeds per variant (default {defaults.seeds})")
    parser.add_argument("--jobs", type=int, default=defaults.jobs,
                        help="runs trained at once, one process and one torch thread each "
                             f"(default {defaults.jobs})")


if __name__ == "__main__":
    raise SystemExit(main())

"""Training: Transformer-XL style streams with memory carried across segments.

Loss = LM cross-entropy + aux_weight * (the compression loss chosen by config.aux_loss); it
reaches only the compressor parameters (and the auto-encoding decoder) by construction
(model.py). Recipe of the paper: Adam, learning rate
warmed up linearly from 1e-6 to the peak then cosine-decayed to 1e-6 at the last step, gradient
norm clipped at 0.1.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from compressive_rt.ct_reference.checkpoint import load_model, load_optimizer, save_checkpoint
from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.ct_reference.data import (
    SegmentStreams,
    bits_per_byte,
    read_documents,
    split_documents,
)
from compressive_rt.ct_reference.model import CompressiveTransformer
from compressive_rt.errors import CtrtError
from compressive_rt.progress import progress_bar

MIN_LR = 1e-6


@dataclass
class TrainOptions:
    config: ModelConfig = field(default_factory=ModelConfig)
    data: str | None = None  # None: the standard library's .py files
    out: str | None = "checkpoints/ct"
    steps: int = 20000
    minutes: float | None = None
    batch: int = 8
    seed: int = 0
    resume: str | None = None
    lr: float = 3e-4
    warmup_steps: int | None = None  # None: 5% of steps, at most 1000
    aux_weight: float = 1.0
    clip_norm: float = 0.1
    val_every: int = 100
    val_segments: int = 16  # validation length: segments per stream
    val_batch: int = 4
    progress: bool = True


@dataclass
class TrainResult:
    model: CompressiveTransformer
    step: int
    tokens_seen: int
    history: list[dict]  # [{"step", "tokens", "val_bpb"}]
    checkpoint: Path | None


def learning_rate(step: int, total_steps: int, peak: float, warmup_steps: int) -> float:
    """Linear warm-up MIN_LR -> peak over warmup_steps, then cosine decay to MIN_LR at total."""
    if step < warmup_steps:
        return MIN_LR + (peak - MIN_LR) * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return MIN_LR + 0.5 * (peak - MIN_LR) * (1.0 + math.cos(math.pi * progress))


def train(opts: TrainOptions, log: Callable[[str], None] = print) -> TrainResult:
    torch.manual_seed(opts.seed)
    resumed = {}
    if opts.resume:
        model, resumed = load_model(opts.resume)
        model.train()
        config = model.config
    else:
        config = opts.config
        model = CompressiveTransformer(config)
    documents = read_documents(opts.data)
    train_tokens, val_tokens = split_documents(documents)
    streams = SegmentStreams(train_tokens, opts.batch, config.seg_len)
    optimizer = torch.optim.Adam(model.parameters(), lr=MIN_LR)
    step, tokens_seen, history = 0, 0, []
    if resumed:
        if resumed.get("train_bytes") != len(train_tokens) or resumed.get("batch") != opts.batch:
            raise CtrtError(
                f"{opts.resume} was trained on {resumed.get('train_bytes')} bytes with batch "
                f"{resumed.get('batch')}; resume with the same --data and --batch (got "
                f"{len(train_tokens)} bytes, batch {opts.batch})")
        load_optimizer(opts.resume, model, optimizer, resumed["optimizer"])
        step, tokens_seen = resumed["step"], resumed["tokens_seen"]
        history = resumed.get("history", [])
        streams.position = resumed["data_position"]
    warmup = opts.warmup_steps if opts.warmup_steps is not None else min(1000, opts.steps // 20)
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: {n_params / 1e6:.1f}M parameters, {config.n_layers} layers, d={config.d_model}, "
        f"L={config.seg_len} M={config.mem_len} C={config.cmem_len} c={config.compress_rate} "
        f"{config.compress_fn} (aux loss {config.aux_loss}); data: {len(train_tokens)} train / "
        f"{len(val_tokens)} validation "
        f"bytes; batch {opts.batch}" + (f"; resumed at step {step}" if resumed else ""))

    def validate() -> float:
        bpb = bits_per_byte(model, val_tokens, batch=opts.val_batch, max_segments=opts.val_segments)
        history.append({"step": step, "tokens": tokens_seen, "val_bpb": round(bpb, 4)})
        log(f"step {step}: validation {bpb:.3f} bits/byte")
        return bpb

    if not history:
        validate()
    memory = model.init_memory(opts.batch)  # a resumed run restarts with empty memory
    deadline = time.monotonic() + opts.minutes * 60 if opts.minutes is not None else math.inf
    start_step, start_time = step, time.monotonic()
    # With a time budget the step total is only a cap: show a count and a rate, not a false ETA.
    bar = progress_bar(total=opts.steps if opts.minutes is None else None, initial=step,
                       disable=not opts.progress, unit="step",
                       desc=(f"training ({opts.minutes:g} min)" if opts.minutes is not None
                             else "training"))
    model.train()
    while step < opts.steps and time.monotonic() < deadline:
        if streams.position >= streams.segments_per_stream:
            memory = model.init_memory(opts.batch)  # streams start over: old memory is unrelated
        batch = streams.next_batch()  # [B, L+1]
        lr = learning_rate(step, opts.steps, opts.lr, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        out = model(batch[:, :-1], memory, compute_aux=True)
        memory = out.memory
        lm_loss = F.cross_entropy(out.logits.reshape(-1, config.vocab_size),
                                  batch[:, 1:].reshape(-1))
        loss = lm_loss + opts.aux_weight * sum(out.aux_losses.values())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), opts.clip_norm)
        optimizer.step()
        step += 1
        tokens_seen += batch.shape[0] * config.seg_len
        bar.update(1)
        rate = (step - start_step) * batch.shape[0] * config.seg_len / (
            time.monotonic() - start_time)
        bar.set_postfix(loss=f"{loss.item():.3f}", bpb=f"{lm_loss.item() / math.log(2):.3f}",
                        tok_s=f"{rate:.0f}", lr=f"{lr:.1e}", refresh=False)
        if opts.val_every and step % opts.val_every == 0:
            validate()
    bar.close()
    if not history or history[-1]["step"] != step:
        validate()
    checkpoint = None
    if opts.out:
        training = {"step": step, "tokens_seen": tokens_seen, "seed": opts.seed,
                    "data": opts.data, "train_bytes": len(train_tokens), "batch": opts.batch,
                    "data_position": streams.position, "history": history,
                    "lr": opts.lr, "total_steps": opts.steps}
        checkpoint = save_checkpoint(opts.out, model, training, optimizer)
        log(f"saved checkpoint {checkpoint}")
    model.eval()
    return TrainResult(model, step, tokens_seen, history, checkpoint)

"""Recall experiment (issue 22): does the compressed memory keep what a Transformer-XL of the
same attention span forgets?

A task document: a random filler prefix (0..L-1 bytes, so every phase of the segment grid
occurs), P key/value pairs, real text as filler, then every key once more in a random order,
each followed by its value. Keys and values are bytes that never occur in the filler (which is
the ASCII of the default corpus): key i is 0xF0 + i, and its values are A bytes of its own (key
i's block starts at 0x80 + i*A), so a value names its key and recall is one attention lookup.
The distance D of a document is from its first queried value to that key's query; only that
first answer is scored, so every scored answer of a distance is exactly D bytes away.

Reach (a query at offset p in its segment, 0 <= p < L): a layer attends to its segment so far,
the M raw slots of the tokens just before it and the C compressed slots of the c*C tokens before
those. A value D bytes back is in one layer's raw reach for every phase iff D <= M, for none iff
D > M + L - 1; in its compressed reach for every phase iff D <= M + c*C, for none iff
D > M + c*C + L - 1. Across N layers information can hop, up to the paper's temporal range
N * (M + c*C) (plus the phase). The Transformer-XL of equal span has M + C raw slots and no
compression; the one of equal temporal range has M + c*C raw slots.

Each model trains with the same steps, batch, documents and seeds (a curriculum: short
distances first, then wider ones; see training_distance). Scores per distance: teacher-forced
argmax accuracy and bits of the answer byte, eager and through the exported engine
(`Session`), and a control: the compressive model with its compressed memory masked at the
query.

    ctrt bench --recall --jobs 2           # the README's table, into bench_out/recall
    ctrt bench --recall --quick            # seconds: the pipeline on a short distance
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from compressive_rt.benchmarks.jobs import run_jobs
from compressive_rt.ct_reference.config import ModelConfig
from compressive_rt.errors import CtrtError
from compressive_rt.export.tolerances import RELATIVE_TOLERANCE

KEY_BASE, VALUE_BASE = 0xF0, 0x80  # key i is KEY_BASE + i; key i's values follow VALUE_BASE
COMPRESSIVE, POOLING = "conv+attention", "mean_pool"
TRANSFORMER_XL, TRANSFORMER_XL_RANGE = "transformer_xl", "transformer_xl_range"
MASKED = "conv+attention, cmem masked"  # the control, scored from the compressive model
# 2 layers, d=128, L=16, M=32, C=16, c=4: M + C = 48 and M + c*C = 96 are whole segments.
RECALL_BASE = ModelConfig(n_layers=2, d_model=128, n_heads=4, d_ff=512, seg_len=16, mem_len=32,
                          cmem_len=16, compress_rate=4, compress_fn="conv", aux_loss="attention")


@dataclass(frozen=True)
class RecallTask:
    pairs: int = 4  # P keys per document
    values: int = 16  # A values per key: chance = 1/A

    def __post_init__(self) -> None:
        if not 1 <= self.pairs <= 0x100 - KEY_BASE:
            raise CtrtError(f"pairs must be in [1, {0x100 - KEY_BASE}], got {self.pairs}")
        if self.values < 2 or self.pairs * self.values > KEY_BASE - VALUE_BASE:
            raise CtrtError(f"pairs x values must fit the {KEY_BASE - VALUE_BASE} value bytes "
                            f"and values must be >= 2, got {self.pairs} x {self.values}")

    @property
    def min_distance(self) -> int:
        """The shortest distance a document can have: the last pair's value to its query."""
        return 2 * self.pairs - 1

    def length(self, seg_len: int, distance: int) -> int:
        """Bytes every document of at most this distance fits in (the last answer + 1)."""
        # last answer <= (L-1) + 2P + (D-1) + 2P - 1
        return seg_len + 4 * self.pairs + distance - 2

    def document(self, rng: np.random.Generator, filler: np.ndarray, seg_len: int,
                 distance: int, length: int) -> tuple[np.ndarray, int]:
        """One document [length] uint8 whose first query is `distance` bytes after its value;
        returns it and the position of that query (its answer is the next byte)."""
        if distance < self.min_distance:
            raise CtrtError(f"distance {distance} is shorter than the pairs allow "
                            f"({self.min_distance} for {self.pairs} pairs)")
        order = rng.permutation(self.pairs)  # the keys as written
        values = VALUE_BASE + np.arange(self.pairs) * self.values + rng.integers(
            0, self.values, self.pairs)  # [P] key i's value byte
        queries = rng.permutation(self.pairs)
        first = int(np.flatnonzero(order == queries[0])[0])  # its pair's index in the text
        # first query at prefix + 2P + gap, its value at prefix + 2*first + 1
        gap = distance - 2 * self.pairs + 2 * first + 1
        if gap < 0:  # only a later pair is close enough: write the queried key last
            order[[first, self.pairs - 1]] = order[[self.pairs - 1, first]]
            first = self.pairs - 1
            gap = distance - 1
        prefix = int(rng.integers(0, seg_len))
        start = int(rng.integers(0, len(filler) - length))
        doc = filler[start:start + length].copy()  # filler everywhere the task is not
        pairs = np.stack([KEY_BASE + order, values[order]], axis=1).reshape(-1)  # [2P]
        doc[prefix:prefix + 2 * self.pairs] = pairs
        query = prefix + 2 * self.pairs + gap
        answers = np.stack([KEY_BASE + queries, values[queries]], axis=1).reshape(-1)  # [2P]
        doc[query:query + 2 * self.pairs] = answers
        return doc, query


def ascii_filler(tokens: np.ndarray) -> np.ndarray:
    """The bytes below 0x80 of tokens [n] uint8: text in which no key or value byte occurs."""
    return tokens[tokens < VALUE_BASE]


def reaches(config: ModelConfig) -> dict:
    """Distances a value can be from its query and still be attended (module doc)."""
    seg, mem, cmem, rate, layers = (config.seg_len, config.mem_len, config.cmem_len,
                                    config.compress_rate, config.n_layers)
    direct = mem + rate * cmem
    return {"raw_every_phase": mem, "raw_some_phase": mem + seg - 1,
            "direct_every_phase": direct, "direct_some_phase": direct + seg - 1,
            "temporal_range": layers * direct, "range_some_phase": layers * direct + seg - 1}


def variant_configs(base: ModelConfig) -> dict[str, ModelConfig]:
    """The four models: conv + attention reconstruction, mean pooling, and Transformer-XLs of
    equal attention span (M + C) and equal temporal range (M + c*C)."""
    span, direct = base.mem_len + base.cmem_len, base.mem_len + base.compress_rate * base.cmem_len
    for name, memory in (("attention span M + C", span), ("temporal range M + c*C", direct)):
        if memory % base.seg_len:
            raise CtrtError(f"the Transformer-XL of equal {name} needs {memory} memory slots, "
                            f"a multiple of seg_len={base.seg_len}; choose mem_len and cmem_len "
                            f"so that it is")
    return {COMPRESSIVE: base.replace(compress_fn="conv", aux_loss="attention"),
            POOLING: base.replace(compress_fn="mean_pool", aux_loss="none"),
            TRANSFORMER_XL: base.replace(compress_fn="none", cmem_len=0, mem_len=span,
                                         aux_loss="none"),
            TRANSFORMER_XL_RANGE: base.replace(compress_fn="none", cmem_len=0, mem_len=direct,
                                               aux_loss="none")}


def default_distances(config: ModelConfig, task: RecallTask) -> tuple[int, ...]:
    """One distance per regime: inside the FIFO memory; beyond it but inside the equal-span
    Transformer-XL's memory; beyond that (for every phase) but inside one compressive layer's
    reach; beyond every direct reach but inside the compressive model's temporal range; beyond
    everything."""
    reach, txl = reaches(config), reaches(variant_configs(config)[TRANSFORMER_XL])
    candidates = [
        config.mem_len // 2,
        txl["raw_every_phase"],
        (txl["raw_some_phase"] + 1 + reach["direct_every_phase"]) // 2,
        (max(reach["direct_some_phase"], txl["range_some_phase"]) + reach["temporal_range"]) // 2
        + 1,
        reach["range_some_phase"] + config.seg_len]
    return tuple(sorted({max(d, task.min_distance) for d in candidates}))


@dataclass(frozen=True)
class RecallSettings:
    steps: int = 8000  # optimizer steps (segments of a training batch) per run
    seeds: int = 2
    batch: int = 16  # documents trained at once
    lr: float = 1e-3
    answer_weight: float = 30.0  # weight of an answer byte's loss against a filler byte's
    curriculum_start: int = 16  # the longest training distance at first ...
    train_distance: int = 160  # ... widened to this (training_distance)
    eval_documents: int = 128  # per distance
    distances: tuple[int, ...] | None = None  # None: default_distances
    jobs: int = 1
    task: RecallTask = field(default_factory=RecallTask)


QUICK = RecallSettings(steps=12, seeds=1, batch=4, curriculum_start=12, train_distance=24,
                       eval_documents=4, distances=(12, 24))
QUICK_BASE = RECALL_BASE.replace(d_model=32, n_heads=2, d_ff=64, seg_len=8, mem_len=8,
                                 cmem_len=8, compress_rate=2)  # M + C = 16, M + cC = 24


def training_distance(settings: RecallSettings, step: int, rng: np.random.Generator) -> int:
    """The curriculum: uniform over [min, longest]; the longest is curriculum_start for the
    first 30% of the steps (the lookup is learned where every model can reach), then widens
    linearly to train_distance until 60%. Trained on every distance from the start, no model
    learned the lookup at all in the pilots (README)."""
    low = settings.task.min_distance + 1
    progress = min(1.0, max(0.0, (step / settings.steps - 0.3) / 0.3))
    high = round(settings.curriculum_start
                 + (settings.train_distance - settings.curriculum_start) * progress)
    return int(rng.integers(low, max(low, high) + 1))


def train_model(config: ModelConfig, seed: int, settings: RecallSettings, filler: np.ndarray):
    """A model trained on task documents, settings.batch at a time from empty memory, every
    byte a target (answers weighted), plus the config's compression loss."""
    import torch
    import torch.nn.functional as F

    from compressive_rt.ct_reference.model import CompressiveTransformer
    from compressive_rt.ct_reference.train import learning_rate

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    task, seg_len = settings.task, config.seg_len
    model = CompressiveTransformer(config)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    warmup = max(1, settings.steps // 20)
    segments = -(-task.length(seg_len, settings.train_distance) // seg_len)
    step = 0
    model.train()
    while step < settings.steps:
        docs, weights = [], []
        for _ in range(settings.batch):
            doc, query = task.document(rng, filler, seg_len, training_distance(
                settings, step, rng), segments * seg_len + 1)
            weight = np.ones(len(doc) - 1, dtype=np.float32)  # [n] per target byte
            weight[query:query + 2 * task.pairs:2] = settings.answer_weight
            docs.append(doc)
            weights.append(weight)
        tokens = torch.from_numpy(np.stack(docs).astype(np.int64))  # [B, S*L + 1]
        weight = torch.from_numpy(np.stack(weights))  # [B, S*L]
        memory = model.init_memory(settings.batch)
        for start in range(0, segments * seg_len, seg_len):
            if step == settings.steps:
                break
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, settings.steps, settings.lr, warmup)
            out = model(tokens[:, start:start + seg_len], memory, compute_aux=True)
            memory = out.memory
            losses = F.cross_entropy(out.logits.reshape(-1, config.vocab_size),
                                     tokens[:, start + 1:start + seg_len + 1].reshape(-1),
                                     reduction="none")  # [B*L]
            w = weight[:, start:start + seg_len].reshape(-1)
            loss = (losses * w).sum() / w.sum() + sum(out.aux_losses.values())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            step += 1
    model.eval()
    return model


def evaluation_documents(settings: RecallSettings, seg_len: int, filler: np.ndarray,
                         distance: int) -> tuple[np.ndarray, np.ndarray]:
    """The same documents for every model: [n, length] uint8 and their query positions [n]."""
    rng = np.random.default_rng(1_000_003 * distance + 7)
    length = -(-settings.task.length(seg_len, distance) // seg_len) * seg_len + 1  # whole segments
    docs, queries = zip(*(settings.task.document(rng, filler, seg_len, distance, length)
                          for _ in range(settings.eval_documents)), strict=True)
    return np.stack(docs), np.array(queries)


def answer_scores(logits: np.ndarray, docs: np.ndarray, queries: np.ndarray) -> dict:
    """From logits [n, length-1, V] (float32): bits and argmax hits of each first answer, and
    the bits of every byte."""
    from compressive_rt.runtime.score import target_bits

    rows = np.arange(len(docs))
    answer_logits = logits[rows, queries]  # [n, V]
    answers = docs[rows, queries + 1]
    bits = [target_bits(answer_logits[i:i + 1], answers[i:i + 1]) for i in rows]
    document_bits = sum(target_bits(logits[i], docs[i, 1:]) for i in rows)
    return {"accuracy": float(np.mean(answer_logits.argmax(-1) == answers)),
            "answer_bits": float(np.mean(bits)),
            "bpb": document_bits / (docs.shape[0] * (docs.shape[1] - 1)),
            "argmax": answer_logits.argmax(-1).tolist()}


def eager_logits(model, docs: np.ndarray, queries: np.ndarray,
                 mask_cmem: bool = False) -> np.ndarray:
    """Logits [n, length-1, V] of the eager model, segment by segment from empty memory; with
    mask_cmem the segment holding each document's query sees no compressed memory (later
    segments then carry a memory that is not the model's: only the query's logits count)."""
    import torch

    seg_len = model.config.seg_len
    tokens = torch.from_numpy(docs[:, :-1].astype(np.int64))  # [n, S*L]
    query = torch.from_numpy(queries)
    memory = model.init_memory(len(docs))
    chunks = []
    with torch.no_grad():
        for start in range(0, tokens.shape[1], seg_len):
            seen = memory
            if mask_cmem:
                here = (query >= start) & (query < start + seg_len)  # [n]
                seen = replace(memory, cmem_len=torch.where(here, 0, memory.cmem_len))
            out = model(tokens[:, start:start + seg_len], seen)
            memory = out.memory
            chunks.append(out.logits)
    return torch.cat(chunks, dim=1).numpy()  # [n, S*L, V]


def engine_logits(engine_dir: Path, docs: np.ndarray) -> np.ndarray:
    """The same logits through the exported engine: one Session stream per document."""
    from compressive_rt.runtime.session import Session

    with Session(engine_dir, backend="onnxruntime-cpu", max_streams=len(docs),
                 threads=1) as session:
        streams = [session.add_stream() for _ in docs]
        out = session.feed({s: doc[:-1].astype(np.int32) for s, doc in zip(streams, docs,
                                                                           strict=True)})
        return np.stack([out[s] for s in streams])


def _train_and_score(args: tuple) -> tuple[str, int, dict]:
    """One run: train, export, score every distance eager and through the engine (and the
    control where there is compressed memory). Seed 0's engine is kept in engine_dir and
    greedily answers the example prompt."""
    from compressive_rt.benchmarks.engines import export_engine

    name, config, seed, settings, distances, filler, held_out, engine_dir, prompt = args
    start = time.monotonic()
    model = train_model(config, seed, settings, filler)
    trained = time.monotonic() - start
    run: dict = {"seed": seed, "train_seconds": round(trained, 1), "distances": {}}
    with tempfile.TemporaryDirectory(prefix="ctrt-recall-") as work:
        engine = export_engine(model, engine_dir if seed == 0 else Path(work) / "engine")
        for distance in distances:
            docs, queries = evaluation_documents(settings, config.seg_len, held_out, distance)
            row = {"eager": answer_scores(eager_logits(model, docs, queries), docs, queries),
                   "engine": answer_scores(engine_logits(engine, docs), docs, queries)}
            if config.cmem_len:
                row["masked"] = answer_scores(eager_logits(model, docs, queries, mask_cmem=True),
                                              docs, queries)
            run["distances"][str(distance)] = row
        if seed == 0:
            run["example_generated"] = list(greedy_answer(engine, prompt))
    run["seconds"] = round(time.monotonic() - start, 1)
    return name, seed, run


def example_prompt(settings: RecallSettings, config: ModelConfig, filler: np.ndarray,
                   distances: tuple[int, ...]) -> tuple[int, bytes, int]:
    """The first evaluation document at the first distance beyond the equal-span
    Transformer-XL's reach (for every phase) and inside one compressive layer's, cut after its
    first query: (distance, prompt, expected answer byte)."""
    span_end = reaches(variant_configs(config)[TRANSFORMER_XL])["raw_some_phase"]
    beyond = [d for d in distances if span_end < d <= reaches(config)["direct_every_phase"]]
    distance = (beyond or list(distances))[0]
    docs, queries = evaluation_documents(settings, config.seg_len, filler, distance)
    query = int(queries[0])
    return distance, docs[0, :query + 1].tobytes(), int(docs[0, query + 1])


def greedy_answer(engine_dir: Path, prompt: bytes) -> bytes:
    """What `ctrt generate --greedy --max-new-tokens 1` writes after the prompt."""
    from compressive_rt.runtime.generate import generate
    from compressive_rt.runtime.sampling import Sampling
    from compressive_rt.runtime.session import Session

    with Session(engine_dir, backend="onnxruntime-cpu", threads=1) as session:
        return generate(session, prompt, 1, Sampling(greedy=True))


def summarize(runs: list[dict], distances: tuple[int, ...]) -> dict:
    """Per distance and kind of scoring: mean and spread (max - min) over seeds."""
    def stats(values: list[float]) -> dict:
        return {"mean": round(statistics.fmean(values), 4),
                "spread": round(max(values) - min(values), 4)}

    summary = {}
    for distance in map(str, distances):
        rows = [run["distances"][distance] for run in runs]
        summary[distance] = {kind: {key: stats([row[kind][key] for row in rows])
                                    for key in ("accuracy", "answer_bits", "bpb")}
                             for kind in rows[0]}
    return summary


def engine_agreement(runs: list[dict]) -> dict:
    """How far the engine's figures are from eager ones: the largest relative difference of
    answer bits and of document bits per byte, and answers whose argmax differs."""
    worst_answer = worst_bpb = 0.0
    differing = total = 0
    for run in runs:
        for row in run["distances"].values():
            eager, engine = row["eager"], row["engine"]
            worst_answer = max(worst_answer, abs(engine["answer_bits"] - eager["answer_bits"])
                               / max(1.0, abs(eager["answer_bits"])))
            worst_bpb = max(worst_bpb, abs(engine["bpb"] - eager["bpb"]) / max(1.0, eager["bpb"]))
            differing += sum(a != b for a, b in zip(eager["argmax"], engine["argmax"],
                                                    strict=True))
            total += len(eager["argmax"])
    return {"max_rel_answer_bits": worst_answer, "max_rel_bpb": worst_bpb,
            "argmax_differing": differing, "answers": total,
            "within_1e-4": max(worst_answer, worst_bpb) <= RELATIVE_TOLERANCE["fp32"]}


def run_recall(settings: RecallSettings, out_dir: Path, base: ModelConfig = RECALL_BASE,
               data: str | None = None, log: Callable[[str], None] = print) -> dict:
    """Train every model for every seed, score them; write recall.json and recall.png."""
    import torch

    from compressive_rt.ct_reference.data import read_documents, split_documents

    if settings.steps < 1 or settings.seeds < 1 or settings.batch < 1:
        raise CtrtError(f"--steps, --seeds and the batch must be >= 1, got {settings.steps}, "
                        f"{settings.seeds} and {settings.batch}")
    configs = variant_configs(base)
    distances = settings.distances or default_distances(base, settings.task)
    if min(distances) < settings.task.min_distance:
        raise CtrtError(f"distances must be >= {settings.task.min_distance} for "
                        f"{settings.task.pairs} pairs, got {min(distances)}")
    train_text, held_out_text = split_documents(read_documents(data))
    filler, held_out = ascii_filler(train_text), ascii_filler(held_out_text)
    longest = settings.task.length(base.seg_len, max(max(distances), settings.train_distance))
    if min(len(filler), len(held_out)) <= longest + base.seg_len:
        raise CtrtError(f"the corpus' text is too short for documents of {longest} bytes")
    started = time.monotonic()
    log(f"recall: {len(configs)} models x {settings.seeds} seed(s), {settings.steps} steps of "
        f"{settings.batch} x {base.seg_len} tokens each; distances {', '.join(map(str, distances))}"
        f"; reaches {reaches(base)}")
    distance, prompt, expected = example_prompt(settings, base, held_out, distances)
    job_args = [(name, configs[name], seed, settings, distances, filler, held_out,
                 out_dir / "engines" / name, prompt)
                for name in configs for seed in range(settings.seeds)]
    results_of_runs = run_jobs(_train_and_score, job_args, settings.jobs)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "prompt.bin").write_bytes(prompt)
    runs: dict[str, list[dict]] = {name: [] for name in configs}
    for name, seed, run in results_of_runs:
        runs[name].append(run)
        accuracies = ", ".join(f"D={d}: {row['eager']['accuracy']:.2f}"
                               for d, row in run["distances"].items())
        log(f"{name} seed {seed}: {accuracies} (trained {run['train_seconds']:.0f} s, "
            f"{run['seconds']:.0f} s in all)")
    results: dict = {
        "settings": {**asdict(settings), "distances": list(distances)},
        "base_config": base.to_dict(), "data": data or "default",
        "tokens_per_run": settings.steps * settings.batch * base.seg_len,
        "chance_accuracy": 1 / settings.task.values,
        "chance_answer_bits": math.log2(settings.task.values),
        "reaches": {name: reaches(config) for name, config in configs.items()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch_threads": 1 if settings.jobs > 1 else torch.get_num_threads(),
                    "torch": torch.__version__},
        "models": {name: {"config": configs[name].to_dict(),
                          "summary": summarize(runs[name], distances), "runs": runs[name]}
                   for name in configs},
        "engine_vs_eager": engine_agreement([r for rs in runs.values() for r in rs]),
        "example": {"distance": distance, "prompt": str(out_dir / "prompt.bin"),
                    "key": prompt[-1], "expected": expected,
                    "generated": {name: runs[name][0]["example_generated"] for name in configs}},
        "seconds": round(time.monotonic() - started, 1)}
    (out_dir / "recall.json").write_text(json.dumps(results, indent=2) + "\n")
    plot(results, out_dir / "recall.png")
    log(format_table(results))
    log(f"wrote {out_dir / 'recall.json'} and {out_dir / 'recall.png'} "
        f"({results['seconds'] / 60:.1f} min)")
    return results


def curves(results: dict) -> dict[str, tuple[str, str]]:
    """Each line of the table and plot: label -> (model, kind of scoring)."""
    lines = {name: (name, "eager") for name in results["models"]}
    lines[MASKED] = (COMPRESSIVE, "masked")
    return lines


def format_table(results: dict) -> str:
    distances = results["settings"]["distances"]
    agreement = results["engine_vs_eager"]
    lines = [f"value-byte accuracy (teacher-forced argmax), mean [spread] over "
             f"{results['settings']['seeds']} seed(s), {results['tokens_per_run']} training "
             f"tokens per run; chance {results['chance_accuracy']:.3f}",
             f"{'model':<28}" + "".join(f"{'D=' + str(d):>14}" for d in distances)]
    for label, (name, kind) in curves(results).items():
        summary = results["models"][name]["summary"]
        lines.append(f"{label:<28}" + "".join(
            f"{summary[str(d)][kind]['accuracy']['mean']:>7.3f} "
            f"[{summary[str(d)][kind]['accuracy']['spread']:.2f}]" for d in distances))
    lines.append(f"answer bits (chance {results['chance_answer_bits']:.2f})")
    for label, (name, kind) in curves(results).items():
        summary = results["models"][name]["summary"]
        lines.append(f"{label:<28}" + "".join(
            f"{summary[str(d)][kind]['answer_bits']['mean']:>14.3f}" for d in distances))
    lines.append(f"engine vs eager: answer bits within {agreement['max_rel_answer_bits']:.1e}, "
                 f"bits/byte within {agreement['max_rel_bpb']:.1e} (rule 1e-4: "
                 f"{'met' if agreement['within_1e-4'] else 'MISSED'}), argmax differs on "
                 f"{agreement['argmax_differing']} of {agreement['answers']} answers")
    example = results["example"]
    answers = ", ".join(f"{name} 0x{written[0]:02x}"
                        for name, written in example["generated"].items())
    lines.append(f"greedy through the engine after {example['prompt']} (D={example['distance']}"
                 f", key 0x{example['key']:02x}, answer 0x{example['expected']:02x}): {answers}")
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    distances = results["settings"]["distances"]
    fig, (acc_ax, bits_ax) = plt.subplots(1, 2, figsize=(14, 5))
    for label, (name, kind) in curves(results).items():
        summary = results["models"][name]["summary"]
        for ax, key in ((acc_ax, "accuracy"), (bits_ax, "answer_bits")):
            means = [summary[str(d)][kind][key]["mean"] for d in distances]
            spreads = [summary[str(d)][kind][key]["spread"] / 2 for d in distances]
            ax.errorbar(distances, means, yerr=spreads, marker="o", capsize=3, label=label,
                        linestyle=":" if kind == "masked" else "-")
    reach_lines = [(results["reaches"][TRANSFORMER_XL]["raw_some_phase"], "Transformer-XL span"),
                   (results["reaches"][COMPRESSIVE]["raw_some_phase"], "FIFO memory M"),
                   (results["reaches"][COMPRESSIVE]["direct_some_phase"],
                    "compressive, one layer"),
                   (results["reaches"][COMPRESSIVE]["range_some_phase"],
                    "compressive, temporal range")]
    for ax, chance in ((acc_ax, results["chance_accuracy"]),
                       (bits_ax, results["chance_answer_bits"])):
        ax.axhline(chance, color="gray", linestyle="--", label="chance")
        for x, label in reach_lines:
            ax.axvline(x, color="black", alpha=0.3)
            ax.text(x, ax.get_ylim()[1], label, rotation=90, va="top", ha="right", fontsize=8)
        ax.set_xlabel("distance D from value to query (bytes); lines: reach at the best phase")
    acc_ax.set_ylabel("value-byte accuracy")
    bits_ax.set_ylabel("bits of the answer byte")
    acc_ax.legend(loc="center left", fontsize=8)
    acc_ax.set_title(f"recall through memory ({results['tokens_per_run']} training tokens, "
                     f"{results['settings']['seeds']} seed(s))")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def recall_settings(quick: bool, steps: int | None, seeds: int | None, jobs: int,
                    distances: tuple[int, ...] | None) -> tuple[RecallSettings, ModelConfig]:
    """The settings and base config of a `ctrt bench --recall` run."""
    settings, base = (QUICK, QUICK_BASE) if quick else (RecallSettings(), RECALL_BASE)
    changes = {"jobs": jobs}
    if steps is not None:
        changes["steps"] = steps
    if seeds is not None:
        changes["seeds"] = seeds
    if distances is not None:
        changes["distances"] = distances
    return replace(settings, **changes), base

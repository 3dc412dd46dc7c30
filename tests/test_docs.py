"""The README's examples run as printed (the blocks tagged `<!-- runnable -->`, in order,
against a small trained checkpoint and its engine where `ctrt demo` puts them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from engines import tiny_config

CHECKOUT = Path(__file__).resolve().parents[1]
README = CHECKOUT / "README.md"
RUNNABLE = "<!-- runnable -->"
BLOCK_TIMEOUT_S = 300


def runnable_blocks(text: str) -> list[tuple[int, str, str]]:
    """(line of the fence, language, code) of every fenced block after a RUNNABLE line."""
    lines = text.splitlines()
    blocks = []
    for index, line in enumerate(lines):
        if line.strip() != RUNNABLE:
            continue
        fence = lines[index + 1]
        assert fence.startswith("```"), f"README.md:{index + 1}: {RUNNABLE} is not before a fence"
        end = lines.index("```", index + 2)
        blocks.append((index + 2, fence[3:].strip(), "\n".join(lines[index + 2:end])))
    return blocks


def test_the_runnable_blocks_are_shell_or_python_on_the_demo_paths():
    blocks = runnable_blocks(README.read_text())
    assert len(blocks) >= 6
    assert {language for _, language, _ in blocks} == {"bash", "python"}
    assert all("demo_out/" in code for _, _, code in blocks)


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """What `ctrt demo` leaves, smaller: demo_out/checkpoint (the tiny test config with L = 64,
    so that scoring the README is 1,500 calls and not 12,000, trained for 30 steps) and
    demo_out/engine exported from it with the checkpoint's SHA-256; beside them the files the
    examples read."""
    from compressive_rt.ct_reference.checkpoint import checkpoint_sha256
    from compressive_rt.ct_reference.train import TrainOptions, train
    from compressive_rt.export.pipeline import export_model

    root = tmp_path_factory.mktemp("readme")
    for name in ("README.md", "pyproject.toml"):
        shutil.copy(CHECKOUT / name, root / name)
    checkpoint = root / "demo_out" / "checkpoint"
    config = tiny_config("conv", seg_len=64, mem_len=64, cmem_len=16, compress_rate=4)
    trained = train(TrainOptions(config=config, data=str(README), out=str(checkpoint),
                                 steps=30, batch=4, lr=3e-3, warmup_steps=5, val_every=0,
                                 val_segments=2, progress=False), log=lambda _: None)
    export_model(trained.model, root / "demo_out" / "engine", log=lambda *_: None, checkpoint={
        "path": str(checkpoint), "sha256": checkpoint_sha256(checkpoint)})
    return root


@pytest.mark.slow
def test_the_readmes_runnable_blocks_run_as_printed(demo_dir):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    for line, language, code in runnable_blocks(README.read_text()):
        command = (["bash", "-euo", "pipefail", "-c", code] if language == "bash"
                   else [sys.executable, "-c", code])
        done = subprocess.run(command, cwd=demo_dir, env=env, capture_output=True, text=True,
                              timeout=BLOCK_TIMEOUT_S)
        assert done.returncode == 0, f"README.md:{line}\n{code}\n{done.stderr[-3000:]}"

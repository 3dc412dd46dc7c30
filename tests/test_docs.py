"""The documents are true to the repository: the README's examples run as printed (the blocks
tagged `<!-- runnable -->`, in order, against a small trained checkpoint and its engine where
`ctrt demo` puts them), its layout table names the modules that exist, and every document the
code cites is in the repository."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from support.engines import tiny_config

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


# ---- the README's layout table and the documents the code cites ----------------------------
FILE_NAME = re.compile(r"^[\w./-]+\.(py|h|hpp|cpp|md)$|^[\w-]+/$")
# rows whose every module the table must name (benchmarks/ and tests/ name their main ones)
NAMES_EVERY_MODULE = {"compressive_rt/", "ct_reference/", "export/", "runtime/", "serving/", "cli/"}
CITATION = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-]+\.md)\b")
# documents of other projects, cited as their sources: onnx-tensorrt's operator table
EXTERNAL_CITATIONS = {("export/trt_ops.py", "docs/operators.md"),
                      ("export/trt_ops.py", "operators.md"),
                      ("tests/test_trt_lint.py", "docs/operators.md")}
CITING_SUFFIXES = {".py", ".h", ".hpp", ".cpp", ".c", ".txt", ".cmake", ".toml", ".md", ".sh"}
SKIPPED = {".git", ".venv", "build", "demo_out", "checkpoints", "__pycache__", "egg-info"}


def layout_rows() -> dict[str, list[str]]:
    """{the row's folder: the file and folder names its "what" cell puts in backticks}."""
    text = README.read_text()
    section = text[text.index("\n## Layout\n"):]
    section = section[:section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = line.split(" | ")
        if not line.startswith("| `") or len(cells) < 4:
            continue
        folder = [name for name in re.findall(r"`([^`]+)`", cells[0]) if name.endswith("/")][0]
        rows[folder] = [name for name in re.findall(r"`([^`]+)`", cells[2])
                        if FILE_NAME.match(name)]
    return rows


def named_path_exists(folder: str, name: str) -> bool:
    """A name is a path from the checkout ("native/src/") or a file or folder in the row's
    folder, at any depth (`base.py` of runtime/ lives in runtime/backends/)."""
    if (CHECKOUT / name).exists() and "/" in name.rstrip("/"):
        return True
    return any((CHECKOUT / folder).rglob(name.rstrip("/")))


def test_every_module_the_readmes_layout_table_names_exists():
    rows = layout_rows()
    assert set(NAMES_EVERY_MODULE) < set(rows)
    missing = {folder: [name for name in names if not named_path_exists(folder, name)]
               for folder, names in rows.items()}
    assert {folder: names for folder, names in missing.items() if names} == {}


def test_the_layout_table_names_every_module_of_the_library_layers():
    rows = layout_rows()
    unnamed = {folder: sorted(path.relative_to(CHECKOUT / folder).as_posix()
                              for path in (CHECKOUT / folder).rglob("*.py")
                              if path.name != "__init__.py" and path.name not in rows[folder])
               for folder in NAMES_EVERY_MODULE}
    assert {folder: names for folder, names in unnamed.items() if names} == {}


def citing_files() -> list[Path]:
    files = []
    for path in CHECKOUT.rglob("*"):
        parts = path.relative_to(CHECKOUT).parts
        if any(part in SKIPPED or part.endswith("egg-info") for part in parts):
            continue
        if path == Path(__file__).resolve():
            continue  # names citations as data
        if path.is_file() and (path.suffix in CITING_SUFFIXES or parts == (".ci", "run")):
            files.append(path)
    return files


def test_every_document_the_code_cites_is_in_the_repository():
    dangling = set()
    for path in citing_files():
        source = path.relative_to(CHECKOUT).as_posix()
        for cited in CITATION.findall(path.read_text(errors="replace")):
            # from the checkout's root, or (a link in a document) from the citing file's folder
            targets = [(base / cited).resolve() for base in (CHECKOUT, path.parent)]
            found = any(t.is_relative_to(CHECKOUT) and t.is_file() for t in targets)
            if (source, cited) not in EXTERNAL_CITATIONS and not found:
                dangling.add((source, cited))
    assert sorted(dangling) == []

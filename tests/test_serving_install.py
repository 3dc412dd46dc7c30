"""A plain `pip install` (no extra) runs exported engines without torch: `ctrt inspect`,
`score`, `generate` and `serve` work in a fresh virtual environment where torch cannot be
imported, with the same numbers as the development install; torch-only commands say which
extra to install. Bounded: pip and every command run under a timeout."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from support.rules import skip_or_fail
from support.serving import Server, greedy

from compressive_rt.runtime.score import score_documents
from compressive_rt.runtime.session import Session

pytestmark = [pytest.mark.serving, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
SOURCE_PARTS = ("pyproject.toml", "README.md", "compressive_rt", "ct_reference", "export",
                "runtime", "serving", "cli", "benchmarks")
PIP_TIMEOUT_S = 900


def run(*command, timeout=300, **kwargs):
    return subprocess.run([str(part) for part in command], capture_output=True, text=True,
                          timeout=timeout, **kwargs)


@pytest.fixture(scope="module")
def plain_venv(tmp_path_factory):
    """bin/ of a fresh venv with `pip install <this project>` (a copy of the source: the build
    writes nothing into the checkout)."""
    work = tmp_path_factory.mktemp("plain")
    source = work / "source"
    for part in SOURCE_PARTS:
        if (ROOT / part).is_dir():
            shutil.copytree(ROOT / part, source / part,
                            ignore=shutil.ignore_patterns("__pycache__"))
        else:
            source.mkdir(exist_ok=True)
            shutil.copy(ROOT / part, source / part)
    venv = work / "venv"
    run(sys.executable, "-m", "venv", venv, check=True)
    installed = run(venv / "bin" / "python", "-m", "pip", "install", "--quiet", source,
                    timeout=PIP_TIMEOUT_S)
    if installed.returncode:
        skip_or_fail(f"pip could not install the project here:\n{installed.stderr[-3000:]}")
    return venv / "bin"


def test_the_plain_install_has_no_torch(plain_venv):
    assert run(plain_venv / "python", "-c", "import torch").returncode == 1
    listed = run(plain_venv / "python", "-m", "pip", "list", "--format", "json").stdout
    assert "torch" not in {package["name"].lower() for package in json.loads(listed)}


def test_inspect_score_and_generate_run_without_torch(plain_venv, engine_dir, tmp_path):
    inspected = run(plain_venv / "ctrt", "inspect", engine_dir)
    assert inspected.returncode == 0 and "segment" in inspected.stdout
    document = tmp_path / "doc.txt"
    document.write_bytes(b"def plain_install():\n    return 'no torch here'\n" * 4)
    scored = run(plain_venv / "ctrt", "score", engine_dir, document, "--json", "--threads", "1")
    assert scored.returncode == 0, scored.stderr
    expected = score_documents(Session(engine_dir), [("doc", document.read_bytes())])[0]
    assert abs(json.loads(scored.stdout)["bits_per_byte"] - expected.bits_per_byte) < 1e-6
    generated = run(plain_venv / "ctrt", "generate", engine_dir, "--prompt", "def ",
                    "--greedy", "--max-new-tokens", "12", "--json", "--threads", "1")
    assert generated.returncode == 0, generated.stderr
    assert json.loads(generated.stdout)["requests"][0]["tokens"] == \
        list(greedy(engine_dir, b"def ", 12))


def test_serve_runs_without_torch(plain_venv, engine_dir, tmp_path):
    server = Server(engine_dir, tmp_path / "store", ctrt=plain_venv / "ctrt").start()
    try:
        answer = httpx.post(f"{server.url}/v1/completions", timeout=60, json={
            "prompt": "import ", "max_tokens": 12, "temperature": 0}).json()
        assert answer["choices"][0]["token_ids"] == list(greedy(engine_dir, b"import ", 12))
        stream = httpx.post(f"{server.url}/v1/streams").json()["id"]
        appended = httpx.post(f"{server.url}/v1/streams/{stream}/append",
                              json={"text": "no torch"}).json()
        assert appended["position"] == 8
        assert server.terminate() == 0
    finally:
        server.stop()


def test_a_torch_only_command_names_the_extra_to_install(plain_venv, tmp_path):
    exported = run(plain_venv / "ctrt", "export", tmp_path / "no_checkpoint", tmp_path / "out")
    assert exported.returncode == 2
    assert "pip install 'compressive-rt[train]'" in exported.stderr
    assert "Traceback" not in exported.stderr

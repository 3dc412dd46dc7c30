"""`ctrt-native` agrees with `ctrt` on the checks they share: an engine whose vocabulary is
larger than a byte is refused by `generate` the same way, and every seed `--json` prints
(unsigned 64-bit) replays with `--seed`."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from support.native import native_library, native_tool

from compressive_rt.benchmarks.launchers.native import NativeSession

pytestmark = [pytest.mark.native, pytest.mark.slow]


def _native_generate(engine_dir, *options: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(native_tool()), "generate", str(engine_dir), "--prompt", "ab",
                           "--max-new-tokens", "12", "--threads", "1", "--json", *options],
                          capture_output=True, text=True)


def test_generate_refuses_a_vocabulary_beyond_bytes_like_ctrt(engine):
    _, engine_dir = engine("conv", vocab_size=259)
    native = _native_generate(engine_dir, "--greedy")
    python = subprocess.run([sys.executable, "-m", "compressive_rt.cli.main", "generate",
                             str(engine_dir), "--prompt", "ab", "--max-new-tokens", "12",
                             "--greedy"], capture_output=True, text=True)
    assert (native.returncode, python.returncode) == (2, 2)
    assert "vocab_size is 259 (> 256)" in native.stderr.splitlines()[-1]
    assert "vocab_size is 259 (> 256)" in python.stderr.splitlines()[-1]
    assert native.stdout == ""


def test_a_seed_above_2_63_replays_the_tokens_of_that_seed(engine):
    _, engine_dir = engine("conv")
    seed = 2**64 - 12345
    done = _native_generate(engine_dir, "--seed", str(seed), "--top-k", "20")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["sampling"]["seed"] == seed
    session = NativeSession(engine_dir, threads=1, library=native_library())
    expected = session.generate(session.add_stream(), b"ab", 12, top_k=20, seed=seed)
    assert out["requests"][0]["tokens"] == expected
    negative = _native_generate(engine_dir, "--seed", str(seed - 2**64), "--top-k", "20")
    assert json.loads(negative.stdout)["requests"][0]["tokens"] == expected  # mod 2^64

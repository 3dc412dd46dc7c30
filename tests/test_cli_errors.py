"""Every `ctrt` subcommand turns bad input into `error: ...` and exit code 2, never a traceback.

One row per (subcommand, kind of bad input), run in-process through cli.main.main. Kinds:
missing path, a directory where a file is expected (or a file where a directory is), a corrupt
file, a bad option value. An unreadable file (chmod 000) is not a case of its own: the tests
run as root, for whom permissions do not apply, so a corrupt file stands in for it.
"""

import json
import sqlite3

import pytest
from support.engines import random_model, tiny_config

from compressive_rt.cli.main import COMMAND_MODULES, build_parser, main


@pytest.fixture(scope="module")
def paths(engine, tmp_path_factory):
    """Placeholders of the table: real files, directories, checkpoints and engines (ENGINE is
    the session's conv engine: the table only reads it)."""
    from compressive_rt.ct_reference.checkpoint import save_checkpoint
    from compressive_rt.serving.sqlite_store import DATABASE, SQLiteStore

    root = tmp_path_factory.mktemp("cli_errors")
    model, engine = engine("conv")
    checkpoint = save_checkpoint(root / "ckpt", model)
    corrupt_checkpoint = save_checkpoint(root / "corrupt_ckpt", random_model(tiny_config()))
    weights = corrupt_checkpoint / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:200])
    corrupt_manifest = root / "corrupt_manifest"
    corrupt_manifest.mkdir()
    (corrupt_manifest / "manifest.json").write_bytes(b"\x00\xffnot json")
    corrupt_graph = root / "corrupt_graph"
    corrupt_graph.mkdir()
    for path in engine.iterdir():
        (corrupt_graph / path.name).write_bytes(path.read_bytes())
    graph = corrupt_graph / json.loads((engine / "manifest.json").read_text())[
        "entry_points"]["segment"]["file"]
    graph.write_bytes(graph.read_bytes()[:-10])
    garbage = root / "garbage.bin"
    garbage.write_bytes(b"\x00\xff\xfe garbage \x80\x04")
    constructor_args = root / "args.json"
    constructor_args.write_text("{}")
    doc = root / "doc.txt"
    doc.write_bytes(b"hello compressive transformer " * 10)
    folder = root / "folder"
    (folder / "empty_subfolder").mkdir(parents=True)
    newer_store = root / "newer_store"
    newer_store.mkdir()
    newer = sqlite3.connect(newer_store / DATABASE)
    newer.executescript("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL); "
                        "INSERT INTO meta VALUES ('schema_version', '9')")
    newer.close()
    SQLiteStore(root / "empty_store", None).close()
    return {"CKPT": checkpoint, "CORRUPT_CKPT": corrupt_checkpoint, "ENGINE": engine,
            "CORRUPT_MANIFEST": corrupt_manifest, "CORRUPT_GRAPH": corrupt_graph,
            "GARBAGE": garbage, "DOC": doc, "DIR": folder, "ARGS": constructor_args,
            "MISSING": root / "no_such_path", "OUT": root / "out",
            "NEWER_STORE": newer_store, "EMPTY_STORE": root / "empty_store"}


CASES = [
    # (argv with placeholders, what the message must say)
    ("train --preset tiny --data MISSING --out OUT", "MISSING"),
    ("train --preset tiny --data DIR --out OUT", "data folder DIR holds no files"),
    ("train --preset tiny --config DIR --out OUT", "config file DIR is not a file"),
    ("train --preset tiny --config GARBAGE --out OUT", "GARBAGE is not valid JSON"),
    ("train --preset tiny --resume CORRUPT_CKPT --out OUT", "model.safetensors"),
    ("train --preset tiny --batch 0 --out OUT", "--batch must be >= 1, got 0"),
    ("train --preset tiny --steps 0 --out OUT", "--steps must be >= 1, got 0"),
    ("train --preset tiny --minutes -1 --out OUT", "--minutes must be > 0, got -1"),
    ("train --preset tiny --out GARBAGE", "GARBAGE exists and is not a directory"),
    ("eval MISSING", "checkpoint directory MISSING does not exist"),
    ("eval GARBAGE", "checkpoint directory GARBAGE is not a directory"),
    ("eval CORRUPT_CKPT", "is not a readable safetensors file"),
    ("eval CKPT MISSING", "MISSING"),
    ("eval CKPT DOC --max-segments 0", "--max-segments must be >= 1, got 0"),
    ("demo --data MISSING --out OUT", "MISSING"),
    ("demo --minutes 0 --out OUT", "--minutes must be > 0, got 0"),
    ("demo --out GARBAGE", "GARBAGE exists and is not a directory"),
    ("import-checkpoint --from compressive-transformer-pytorch MISSING --config ARGS OUT",
     "state_dict file MISSING does not exist"),
    ("import-checkpoint --from compressive-transformer-pytorch DIR --config ARGS OUT",
     "state_dict file DIR does not exist"),
    ("import-checkpoint --from compressive-transformer-pytorch GARBAGE --config ARGS OUT",
     "GARBAGE: not a readable torch state_dict"),
    ("import-checkpoint --from compressive-transformer-pytorch GARBAGE --config MISSING OUT",
     "cannot read MISSING"),
    ("import-checkpoint --from compressive-transformer-pytorch GARBAGE --config DIR OUT",
     "cannot read DIR: Is a directory"),
    ("import-checkpoint --from compressive-transformer-pytorch GARBAGE --config GARBAGE OUT",
     "GARBAGE: not valid JSON"),
    ("export MISSING OUT", "checkpoint directory MISSING does not exist"),
    ("export GARBAGE OUT", "checkpoint directory GARBAGE is not a directory"),
    ("export CORRUPT_CKPT OUT", "is not a readable safetensors file"),
    ("export CKPT OUT --verify-segments 5", "--verify-segments must be >= 20, got 5"),
    ("export CKPT GARBAGE", "GARBAGE exists and is not a directory"),
    ("inspect MISSING", "engine directory MISSING does not exist"),
    ("inspect GARBAGE", "engine directory GARBAGE does not exist"),
    ("inspect CORRUPT_MANIFEST", "is not valid JSON"),
    ("inspect CORRUPT_GRAPH", "does not match the sha256"),
    ("build-engine MISSING", "engine directory MISSING does not exist"),
    ("build-engine CORRUPT_MANIFEST", "is not valid JSON"),
    ("build-engine ENGINE --max-batch 0", "--max-batch must be >= 1, got 0"),
    ("build-engine ENGINE --opt-batch 9 --max-batch 8", "--opt-batch must be in [1, "
                                                        "--max-batch=8], got 9"),
    ("score MISSING DOC", "engine directory MISSING does not exist"),
    ("score ENGINE MISSING", "MISSING is not a readable file"),
    ("score ENGINE DIR", "DIR is not a readable file"),
    ("score CORRUPT_GRAPH DOC", "does not match the sha256"),
    ("score ENGINE DOC --streams 0", "--streams must be >= 1, got 0"),
    ("score ENGINE DOC --threads 0", "--threads must be >= 1, got 0"),
    ("generate MISSING --prompt a", "engine directory MISSING does not exist"),
    ("generate ENGINE --prompt-file MISSING", "prompt file MISSING is not a readable file"),
    ("generate ENGINE --prompt-file DIR", "prompt file DIR is not a readable file"),
    ("generate CORRUPT_MANIFEST --prompt a", "is not valid JSON"),
    ("generate ENGINE --prompt a --max-new-tokens -1",
     "max_new_tokens must be an integer >= 0, got -1"),
    ("generate ENGINE --prompt a --temperature -1", "temperature"),
    ("generate ENGINE --prompt a --top-p 0", "top_p"),
    ("serve MISSING", "engine directory MISSING does not exist"),
    ("serve CORRUPT_MANIFEST", "is not valid JSON"),
    ("serve ENGINE --streams 0", "--streams must be >= 1, got 0"),
    ("serve ENGINE --port 70000", "--port must be in [0, 65535], got 70000"),
    ("serve ENGINE --request-timeout 0", "--request-timeout must be > 0, got 0"),
    ("serve ENGINE --api-key-file MISSING", "--api-key-file MISSING cannot be read"),
    ("serve ENGINE --store GARBAGE", "cannot open the stream store GARBAGE"),
    ("serve ENGINE --store NEWER_STORE", "the stream store NEWER_STORE has schema version 9; "
     "this server reads 3 (and upgrades 1 and 2)"),
    ("store list MISSING", "no stream store at MISSING: give the --store directory of `ctrt "
     "serve` or its redis:// URL"),
    ("store list NEWER_STORE", "the stream store NEWER_STORE has schema version 9"),
    ("store migrate EMPTY_STORE --engine MISSING", "engine directory MISSING does not exist"),
    ("store migrate NEWER_STORE --engine ENGINE", "has schema version 9"),
    ("store migrate EMPTY_STORE --engine ENGINE --from 0123", "--from 0123 names 0 of the store's "
     "namespaces"),
    ("bench --checkpoint MISSING --out OUT", "checkpoint directory MISSING does not exist"),
    ("bench --checkpoint GARBAGE --out OUT", "checkpoint directory GARBAGE is not a directory"),
    ("bench --checkpoint CORRUPT_CKPT --out OUT", "is not a readable safetensors file"),
    ("bench --threads 0 --out OUT", "--threads must be >= 1, got 0"),
    ("bench --out GARBAGE", "GARBAGE exists and is not a directory"),
]


def test_the_table_covers_every_subcommand():
    subcommands = build_parser()._subparsers._group_actions[0].choices
    assert {argv.split()[0] for argv, _ in CASES} == set(subcommands)
    assert len(COMMAND_MODULES) == 7 and len(subcommands) == 12


@pytest.mark.parametrize("argv, message", CASES, ids=[argv for argv, _ in CASES])
def test_bad_input_is_one_error_line_and_exit_2(paths, capsys, argv, message):
    def fill(text):
        for name in sorted(paths, key=len, reverse=True):
            text = text.replace(name, str(paths[name]))
        return text

    code = main(fill(argv).split())
    stderr = capsys.readouterr().err
    assert code == 2, stderr
    assert "Traceback" not in stderr
    error = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and fill(message) in error[0], stderr
    assert not paths["OUT"].exists()

"""Engine directories are replaced atomically: a failed export leaves the old one byte for byte."""

import json
import os
import shutil

import pytest
from support.engines import random_model, tiny_config

import compressive_rt.export.replace as replace
from compressive_rt.export.pipeline import ExportError, export_model
from compressive_rt.export.replace import replace_directory, tensorrt_plans
from compressive_rt.runtime.manifest import MANIFEST_NAME, load_manifest


def contents(directory):
    """Every file under `directory`, relative path -> bytes."""
    return {str(path.relative_to(directory)): path.read_bytes()
            for path in sorted(directory.rglob("*")) if path.is_file()}


def failing_second_rename(monkeypatch):
    """os.rename in export.replace raises on the staged -> target rename (the second one)."""
    calls = []
    real_rename = os.rename

    def rename(source, destination):
        calls.append((source, destination))
        if len(calls) == 2:
            raise OSError(28, "No space left on device (injected)")
        real_rename(source, destination)

    monkeypatch.setattr(replace.os, "rename", rename)
    return calls


@pytest.fixture
def old_engine(engine, tmp_path):
    """A copy of a tiny engine directory holding a TensorRT plan, and its bytes."""
    _, engine_dir = engine("conv")
    target = tmp_path / "engine"
    shutil.copytree(engine_dir, target)
    (target / "segment.fp16.plan").write_bytes(b"plan bytes")
    return target, contents(target)


def test_a_missing_target_receives_the_staged_directory(tmp_path):
    staged = tmp_path / "staged"
    staged.mkdir()
    (staged / "a.txt").write_text("new")
    replace_directory(staged, tmp_path / "target")
    assert contents(tmp_path / "target") == {"a.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_an_existing_target_is_replaced_and_no_backup_is_left(tmp_path):
    target, staged = tmp_path / "target", tmp_path / "staged"
    (target / "sub").mkdir(parents=True)
    (target / "sub" / "old.txt").write_text("old")
    staged.mkdir()
    (staged / "new.txt").write_text("new")
    replace_directory(staged, target)
    assert contents(target) == {"new.txt": b"new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["target"]


def test_a_failed_swap_puts_the_old_directory_back(tmp_path, monkeypatch):
    target, staged = tmp_path / "target", tmp_path / "staged"
    target.mkdir()
    (target / "old.txt").write_text("old")
    staged.mkdir()
    (staged / "new.txt").write_text("new")
    failing_second_rename(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        replace_directory(staged, target)
    assert contents(target) == {"old.txt": b"old"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staged", "target"]


@pytest.mark.slow
def test_an_export_failing_verification_leaves_the_old_engine_byte_for_byte(
        old_engine, monkeypatch):
    import compressive_rt.export.pipeline as pipeline

    target, before = old_engine
    other = random_model(tiny_config("conv"), seed=1)
    real_export = pipeline.export_graphs
    monkeypatch.setattr(pipeline, "export_graphs",
                        lambda _, out, **options: real_export(other, out, **options))
    with pytest.raises(ExportError, match="differ from the eager model beyond tolerance"):
        export_model(random_model(tiny_config("conv")), target, log=lambda *_: None)
    assert contents(target) == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["engine"]


@pytest.mark.slow
def test_an_export_failing_at_the_final_swap_leaves_the_old_engine_byte_for_byte(
        old_engine, monkeypatch):
    target, before = old_engine
    calls = failing_second_rename(monkeypatch)
    with pytest.raises(OSError, match="injected"):
        export_model(random_model(tiny_config("conv"), seed=2), target, log=lambda *_: None)
    assert len(calls) == 3  # old -> backup, staged -> target (fails), backup -> old
    assert contents(target) == before
    assert sorted(p.name for p in target.parent.iterdir()) == ["engine"]
    load_manifest(target)  # still a working engine


@pytest.mark.slow
def test_an_export_over_tensorrt_plans_says_they_were_removed(old_engine):
    target, _ = old_engine
    manifest = json.loads((target / MANIFEST_NAME).read_text())
    manifest["tensorrt"] = {"engines": {}}
    (target / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert tensorrt_plans(target) == ["segment.fp16.plan", "the manifest.json tensorrt section"]
    lines = []
    export_model(random_model(tiny_config("conv"), seed=2), target, log=lines.append)
    assert lines[-1] == (f"replaced the engine in {target}; its TensorRT plans (segment.fp16.plan,"
                         f" the manifest.json tensorrt section) were built for the old graphs and"
                         f" were removed: rebuild them with `ctrt build-engine {target}`")
    assert tensorrt_plans(target) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["engine"]

"""Swap a finished directory into place, so a failure never leaves half an engine.

`ctrt export` (export/pipeline.py) builds everything in a temporary sibling directory (same
filesystem, so renames are atomic), then calls replace_directory; `ctrt build-engine`
(export/tensorrt_build.py) changes a staged copy of the engine directory (rewrite_directory).
Two renames: the old directory to a backup name, the new one to the target; then the backup is
deleted. If the second rename fails the backup is renamed back.
Between the two renames the target name is briefly absent (Python has no atomic exchange of
two directories); it never holds a mix of old and new files.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from compressive_rt.runtime.manifest import MANIFEST_NAME


def staging_directory(target: Path) -> Path:
    """A new empty directory beside `target` to build its replacement in."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))


def replace_directory(staged: Path, target: Path) -> None:
    """Move `staged` to `target`; an existing `target` is replaced only once `staged` is in."""
    backup = None
    if target.exists():
        # mkdtemp reserves a unique name; rename replaces an empty directory on POSIX.
        backup = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
        try:
            os.rename(target, backup)
        except BaseException:
            backup.rmdir()
            raise
    try:
        os.rename(staged, target)
    except BaseException:
        if backup is not None:
            os.rename(backup, target)
        raise
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def rewrite_directory(target: Path) -> Iterator[Path]:
    """A staged copy of `target` to change: swapped in for `target` when the block ends without
    an exception, removed (`target` untouched) when it raises."""
    staged = staging_directory(target)
    try:
        shutil.copytree(target, staged, dirs_exist_ok=True)
        yield staged
        replace_directory(staged, target)
    finally:
        if staged.exists():
            shutil.rmtree(staged, ignore_errors=True)


def tensorrt_plans(engine_dir: Path) -> list[str]:
    """What in an engine directory is TensorRT's: plan files and a manifest `tensorrt` section
    (both are built for particular graphs)."""
    if not engine_dir.is_dir():
        return []
    found = sorted(path.name for path in engine_dir.glob("*.plan"))
    try:
        manifest = json.loads((engine_dir / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return found
    if isinstance(manifest, dict) and "tensorrt" in manifest:
        found.append(f"the {MANIFEST_NAME} tensorrt section")
    return found

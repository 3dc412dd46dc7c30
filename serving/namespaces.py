"""A store's namespaces: the streams of each engine apart from every other engine's.

A snapshot fits only an engine of the one that wrote it (its cached key/value projections were
computed with that engine's weights), so a store keeps the streams of each engine identity
(runtime/snapshot.py's `engine_identity`) in a namespace of their own, named by a digest of the
identity. A server opens its engine's namespace (empty the first time: a re-exported engine
starts with no streams rather than being refused); streams move to another namespace only by
`ctrt store migrate` (serving/migration.py), and only where the restore-compatibility rule
(runtime/snapshot.py's `check_restore_compatible`) holds.

A namespace's record keeps the engine's identity and what the rule compares beyond it: the
model config and the engine's precision. A namespace carried over from a store written before
namespaces records only the identity (its engine's config and precision were never stored).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

from compressive_rt.runtime.manifest import Manifest
from compressive_rt.runtime.snapshot import engine_identity

DIGEST_CHARS = 16  # a namespace's name: this many hex digits of the identity's SHA-256


@dataclass(frozen=True)
class EngineNamespace:
    """One engine's namespace: its identity as canonical JSON (`key`), and the config and
    precision of its engine (None where the store never recorded them)."""

    key: str
    config: dict | None = None
    precision: str | None = None

    @property
    def digest(self) -> str:
        """The namespace's name in the store and in `ctrt store` commands."""
        return hashlib.sha256(self.key.encode()).hexdigest()[:DIGEST_CHARS]

    @property
    def identity(self) -> dict:
        """The engine identity (an empty dict where the key is not one: tests name engines
        with plain strings)."""
        try:
            identity = json.loads(self.key)
        except ValueError:
            return {}
        return identity if isinstance(identity, dict) else {}

    def record(self) -> str:
        """How the store keeps the namespace (JSON)."""
        return json.dumps({"engine": self.key, "config": self.config,
                           "precision": self.precision}, sort_keys=True)

    @staticmethod
    def from_record(text: str) -> EngineNamespace:
        record = json.loads(text)
        return EngineNamespace(record["engine"], record.get("config"), record.get("precision"))

    def summary(self) -> str:
        """The engine in one line: contract, checkpoint, graph hash prefixes, precision."""
        identity = self.identity
        if not identity:
            return repr(self.key)
        checkpoint = identity.get("checkpoint_sha256")
        graphs = identity.get("graphs") if isinstance(identity.get("graphs"), dict) else {}
        return (f"contract v{identity.get('contract_version')}, checkpoint "
                f"{str(checkpoint)[:12] if checkpoint else 'not recorded'}, "
                f"{self.precision or identity.get('precision') or 'precision not recorded'}, "
                f"graphs "
                + " ".join(f"{name} {str(sha)[:12]}" for name, sha in sorted(graphs.items())))


def engine_namespace(manifest: Manifest) -> EngineNamespace:
    """The namespace of the engine whose manifest this is."""
    return EngineNamespace(json.dumps(engine_identity(manifest), sort_keys=True),
                           manifest.config, manifest.data.get("precision"))


@dataclass(frozen=True)
class NamespaceUsage:
    """What a namespace holds: its streams, their stored bytes (snapshots, logs and receipts)
    and the streams moved out of it (each leaves a marker that answers 409)."""

    namespace: EngineNamespace
    streams: int
    bytes: int
    moved: int


def others_line(location: str, here: EngineNamespace, usages: list[NamespaceUsage]) -> str | None:
    """The line a server logs when its store holds streams of other engines (None: it holds
    none)."""
    others = [usage for usage in usages
              if usage.namespace.digest != here.digest and usage.streams]
    if not others:
        return None
    named = "; ".join(f"{usage.namespace.digest} ({usage.streams} streams, "
                      f"{usage.namespace.summary()})" for usage in others)
    return (f"the store {location} opens namespace {here.digest} for this engine; it also holds "
            f"streams of other engines: {named}; `ctrt store migrate {location} --engine "
            f"ENGINE_DIR --from NAMESPACE` moves them to this engine if it is a re-export of "
            f"the same checkpoint")

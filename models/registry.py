"""The model registry: versioned artifacts on a file system.

Layout (``<root>/<name>/<version>/model.onnx|card.json|…`` and
``<root>/<name>/current``)::

    var/models/default/1/model.onnx
    var/models/default/1/card.json
    var/models/default/current          # "1"
    var/models/default/history.jsonl    # one line per promote / rollback

``current`` is replaced atomically, so a service watching it never reads a
half-written number.  ``history.jsonl`` lets ``rollback`` return to the version
that was current before the last promotion.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

from models.artifact import CARD_FILE, MODEL_FILE, Artifact, Card, write_atomic
from models.errors import RegistryError

__all__ = ["ModelRef", "Registry", "parse_ref"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")


@dataclass(frozen=True, slots=True)
class ModelRef:
    """``name`` with an optional ``version`` (None: the current one)."""

    name: str
    version: int | None = None


def parse_ref(text: str) -> ModelRef:
    """Parse ``NAME`` or ``NAME@VERSION``.

    >>> parse_ref("default@3")
    ModelRef(name='default', version=3)
    >>> parse_ref("fraud")
    ModelRef(name='fraud', version=None)
    """
    name, sep, ver = text.partition("@")
    if not _NAME.match(name):
        raise RegistryError(f"invalid model name {name!r}: use letters, digits, '_', '.', '-'")
    if not sep:
        return ModelRef(name)
    if not ver.isdigit() or int(ver) < 1:
        raise RegistryError(f"invalid model version {ver!r} in {text!r}: expected an integer >= 1")
    return ModelRef(name, int(ver))


class Registry:
    """Versioned models under one root directory.

    Parameters
    ----------
    root : path
        The registry root (config ``model.registry``).
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and self.versions(p.name))

    def versions(self, name: str) -> list[int]:
        d = self.root / name
        if not d.is_dir():
            return []
        return sorted(
            int(p.name) for p in d.iterdir()
            if p.name.isdigit() and (p / CARD_FILE).is_file() and (p / MODEL_FILE).is_file()
        )

    def current(self, name: str) -> int | None:
        """The served version, or None when nothing was promoted yet."""
        try:
            text = (self.root / name / "current").read_text().strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            raise RegistryError(f"{self.root / name / 'current'} holds {text!r}, expected a version number")
        return int(text)

    def path(self, name: str, version: int) -> Path:
        return self.root / name / str(version)

    def load(self, ref: str | ModelRef) -> Artifact:
        """Load ``name`` (current version) or ``name@version``."""
        r = parse_ref(ref) if isinstance(ref, str) else ref
        version = r.version if r.version is not None else self.current(r.name)
        if version is None:
            if not self.versions(r.name):
                raise RegistryError(f"no model named {r.name!r} in registry {str(self.root)!r}")
            raise RegistryError(f"model {r.name!r} has no current version; promote one first")
        if version not in self.versions(r.name):
            raise RegistryError(
                f"model {r.name!r} has no version {version} (versions: {self.versions(r.name) or 'none'})"
            )
        return Artifact.load(self.path(r.name, version))

    def register(
        self, name: str, onnx_bytes: bytes, card: Card, files: dict[str, bytes] | None = None,
        *, promote: bool = True,
    ) -> Artifact:
        """Store a new version (the next integer) and optionally make it current."""
        parse_ref(name)
        (self.root / name).mkdir(parents=True, exist_ok=True)
        while True:
            version = max(self.versions(name) + self._reserved(name), default=0) + 1
            target = self.path(name, version)
            try:
                target.mkdir()  # atomic claim: concurrent trainers get distinct versions
                break
            except FileExistsError:
                continue
        art = Artifact.write(target, onnx_bytes, card.with_version(name, version), files)
        if promote:
            self.promote(name, version)
        return art

    def _reserved(self, name: str) -> list[int]:
        return [int(p.name) for p in (self.root / name).iterdir() if p.name.isdigit()]

    def promote(self, name: str, version: int, *, reason: str = "promote") -> None:
        """Make ``version`` current."""
        if version not in self.versions(name):
            raise RegistryError(
                f"model {name!r} has no version {version} (versions: {self.versions(name) or 'none'})"
            )
        previous = self.current(name)
        write_atomic(self.root / name / "current", f"{version}\n".encode())
        with open(self.root / name / "history.jsonl", "a") as fh:
            fh.write(json.dumps({"at": time.time(), "action": reason, "from": previous, "to": version}) + "\n")

    def rollback(self, name: str, version: int | None = None) -> int:
        """Return to ``version``, or to the version current before the last promotion."""
        current = self.current(name)
        if version is None:
            version = self._previous(name, current)
        self.promote(name, version, reason="rollback")
        return version

    def _previous(self, name: str, current: int | None) -> int:
        """The version below the current one on the promotion stack.

        Replaying ``history.jsonl``: a promotion pushes its version, a rollback
        pops back to its target, so rolling back twice walks two steps back.
        """
        stack: list[int] = []
        try:
            with open(self.root / name / "history.jsonl") as fh:
                for line in fh:
                    if not line.strip():
                        continue
                    entry = json.loads(line)
                    to = entry.get("to")
                    if not isinstance(to, int):
                        continue
                    if entry.get("action") == "rollback":
                        while stack and stack[-1] != to:
                            stack.pop()
                        if not stack:
                            stack.append(to)
                    elif not stack or stack[-1] != to:
                        stack.append(to)
        except FileNotFoundError:
            pass
        available = set(self.versions(name))
        below = [v for v in stack[:-1] if v in available and v != current] if stack and stack[-1] == current else []
        if below:
            return below[-1]
        older = [v for v in self.versions(name) if current is None or v < current]
        if not older:
            raise RegistryError(f"model {name!r} has no version to roll back to from {current}")
        return older[-1]

"""The served programs: loading saved ``AlignedResponder`` files, their versions, and hot reload by atomic swap.

A request takes the current :class:`LoadedProgram` once and uses only it, so replacing the registry's entry never
affects a request in flight. A changed file is loaded (and its retrieval index built) off to the side; only a
program that loaded completely replaces the old one, and a broken file leaves the old version serving.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from drpo_dspy import AlignedResponder
from drpo_dspy.serve.decoding import program_defaults
from drpo_dspy.serve.settings import ProgramSpec

logger = logging.getLogger(__name__)

_LOAD_ATTEMPTS = 3


@dataclass(frozen=True)
class FileStamp:
    """What changes when a file is rewritten or replaced."""

    mtime_ns: int
    size: int
    inode: int

    @classmethod
    def of(cls, path: Path) -> FileStamp:
        stat = path.stat()
        return cls(stat.st_mtime_ns, stat.st_size, stat.st_ino)


@dataclass(frozen=True)
class LoadedProgram:
    """One loaded program file; ``version`` is a content hash of the exact bytes loaded."""

    name: str
    path: Path
    responder: Any
    version: str
    stamp: FileStamp
    loaded_at: float
    decoding: dict[str, Any]  # the program's own decoding settings (temperature, max_tokens) where it has them


_MISSING = FileStamp(-1, -1, -1)


def content_version(data: bytes) -> str:
    """The program version clients see: ``drpo-`` and the first 16 hex digits of the file's SHA-256."""
    return "drpo-" + hashlib.sha256(data).hexdigest()[:16]


def load_program(spec: ProgramSpec) -> LoadedProgram:
    """Load ``spec.path`` as an ``AlignedResponder``, with its retrieval index built, and hash what was loaded.

    The file is read before and after loading; if it changed in between (a writer was mid-way), loading is
    retried, so a version always names the bytes that are actually serving.
    """
    path = Path(spec.path)
    if not path.is_file():
        raise FileNotFoundError(f"program file {path} (model {spec.name}) does not exist")
    for _attempt in range(_LOAD_ATTEMPTS):
        stamp, before = FileStamp.of(path), path.read_bytes()
        responder = AlignedResponder(examples=[], k=0)
        responder.load(path)
        if responder.k:
            responder.retrieve("warm-up")  # build embeddings and index now, not on the first request
        if path.read_bytes() == before:
            return LoadedProgram(spec.name, path, responder, content_version(before), stamp, time.time(),
                                 program_defaults(responder))
    raise RuntimeError(f"program file {path} kept changing while it was loaded; try again once it is written")


class ProgramRegistry:
    """Programs by model name; ``get`` is lock-free (the mapping is replaced whole, never mutated)."""

    def __init__(self, specs: list[ProgramSpec]):
        names = [spec.name for spec in specs]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if not specs:
            raise ValueError("no program to serve: give PROGRAM.json or --program NAME=PATH")
        if duplicates:
            raise ValueError(f"model name(s) served twice: {', '.join(duplicates)}")
        self.specs = {spec.name: spec for spec in specs}
        self._programs: dict[str, LoadedProgram] = {}
        self._failed: dict[str, FileStamp] = {}  # last stamp that failed to load, so it is reported once
        self._reload_lock = threading.Lock()

    def load_all(self) -> None:
        """Load every program; any failure is raised (at startup the server should not come up half-configured)."""
        self._programs = {name: load_program(spec) for name, spec in self.specs.items()}

    def get(self, name: str) -> LoadedProgram | None:
        return self._programs.get(name)

    def names(self) -> list[str]:
        return list(self.specs)

    def programs(self) -> list[LoadedProgram]:
        return list(self._programs.values())

    def reload_changed(self) -> list[str]:
        """Reload every program whose file changed; return the names whose served version changed."""
        swapped = []
        with self._reload_lock:
            for name, spec in self.specs.items():
                current = self._programs[name]
                try:
                    stamp = FileStamp.of(spec.path)
                except OSError as exc:
                    self._report_failure(name, _MISSING, f"cannot read {spec.path} ({exc.strerror or exc})")
                    continue
                if stamp == current.stamp or stamp == self._failed.get(name):
                    continue
                try:
                    program = load_program(spec)
                except Exception as exc:  # a broken file must never take the served version down
                    self._report_failure(name, stamp, str(exc))
                    continue
                self._failed.pop(name, None)
                self._programs = {**self._programs, name: program}
                if program.version != current.version:
                    swapped.append(name)
                    logger.info("model %s now serves %s (was %s)", name, program.version, current.version)
        return swapped

    def _report_failure(self, name: str, stamp: FileStamp, reason: str) -> None:
        if self._failed.get(name) != stamp:
            logger.warning("keeping %s of model %s: the changed file did not load: %s",
                           self._programs[name].version, name, reason)
        self._failed[name] = stamp

"""The digest journal: the facts a writer's next digest needs, durable before they are needed.

One job: never lose what a digest must list. The shipper journals an entry per
object (key, SHA-256, records, seq ranges) and fsyncs it *before* it deletes
the segment; a dropped record's seq is journaled as a tombstone; a digest is
journaled whole ("prepared", fsynced) before it is put to S3 and marked
"confirmed" after. A process that dies anywhere in between leaves a journal
from which the next owner of the writer slot rebuilds the same state: objects
not yet in a digest, tombstones, the prepared digest to put again (same key,
same bytes), and the chain head to link to.

Files: `<spool>/digests/<writerId>.<generation:08d>.journal`, frames in the
spool's own format (`spool.recovery.encode_frame`: sync magic, length, time,
CRC32, payload), each payload one orjson entry:

    {"t": "object", "e": ObjectEntry}          added to the next digest
    {"t": "tombstone", "e": Tombstone}         added to the next digest
    {"t": "prepared", "seq", "key", "data"}    a digest built; its entries leave the pending set
    {"t": "confirmed", "seq", "key", "sha256"} S3 has it: the new chain head
    {"t": "checkpoint", "state"}               the whole state (first entry of a generation)

Replaying every generation in order gives the state (every entry is an
idempotent transition; frames whose CRC fails are skipped). Compaction writes
a new generation that starts with a checkpoint, fsyncs it and its directory,
and only then deletes the older generations; the writer's flock on its slot
(spool/writers.py) makes one process the journal's only writer.
"""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from ..spool.recovery import Frame, decode_frames, encode_frame, fsync_dir, read_all
from .digest import ChainHead, ObjectEntry, Tombstone, sha256_hex

DIGESTS_DIR = "digests"


class JournalError(Exception):
    """The journal could not be written."""


@dataclass(frozen=True)
class Prepared:
    digest_seq: int
    key: str
    data: bytes


@dataclass
class JournalState:
    head: ChainHead | None = None
    prepared: Prepared | None = None
    objects: dict[str, ObjectEntry] = field(default_factory=dict)
    tombstones: list[Tombstone] = field(default_factory=list)

    def apply(self, entry: dict[str, Any]) -> None:
        kind = entry.get("t")
        if kind == "object":
            obj = ObjectEntry.from_json(entry["e"])
            self.objects[obj.key] = obj
        elif kind == "tombstone":
            stone = Tombstone.from_json(entry["e"])
            if stone not in self.tombstones:
                self.tombstones.append(stone)
        elif kind == "prepared":
            self._prepared(Prepared(entry["seq"], entry["key"], entry["data"].encode()))
        elif kind == "confirmed":
            if self.head is None or entry["seq"] > self.head.digest_seq:
                self.head = ChainHead(entry["seq"], entry["key"], entry["sha256"])
            if self.prepared is not None and self.prepared.digest_seq <= entry["seq"]:
                self.prepared = None
        elif kind == "checkpoint":
            restored = state_from_json(entry["state"])
            self.head, self.prepared = restored.head, restored.prepared
            self.objects.update(restored.objects)
            for stone in restored.tombstones:
                if stone not in self.tombstones:
                    self.tombstones.append(stone)

    def _prepared(self, prepared: Prepared) -> None:
        if self.head is not None and prepared.digest_seq <= self.head.digest_seq:
            return  # already confirmed
        self.prepared = prepared
        body = orjson.loads(prepared.data)["digest"]
        for obj in body["objects"]:
            self.objects.pop(obj["key"], None)
        covered = [Tombstone.from_json(t) for t in body["tombstones"]]
        self.tombstones = [
            t
            for t in self.tombstones
            if not any(
                c.writer_id == t.writer_id and c.first <= t.first and t.last <= c.last
                for c in covered
            )
        ]

    def as_json(self) -> dict[str, Any]:
        head, prepared = self.head, self.prepared
        return {
            "head": None if head is None else [head.digest_seq, head.key, head.sha256],
            "prepared": None
            if prepared is None
            else [prepared.digest_seq, prepared.key, prepared.data.decode()],
            "objects": [o.as_json() for o in self.objects.values()],
            "tombstones": [t.as_json() for t in self.tombstones],
        }


def state_from_json(data: dict[str, Any]) -> JournalState:
    state = JournalState()
    if data.get("head"):
        seq, key, sha = data["head"]
        state.head = ChainHead(seq, key, sha)
    if data.get("prepared"):
        seq, key, text = data["prepared"]
        state.prepared = Prepared(seq, key, text.encode())
    for obj in data.get("objects", []):
        entry = ObjectEntry.from_json(obj)
        state.objects[entry.key] = entry
    state.tombstones = [Tombstone.from_json(t) for t in data.get("tombstones", [])]
    return state


def replay(payloads: list[bytes]) -> JournalState:
    state = JournalState()
    for payload in payloads:
        try:
            entry = orjson.loads(payload)
            state.apply(entry)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            continue  # a frame that validates but is not ours to read: skip, never invent
    return state


class DigestJournal:
    """One writer's journal, used on the event loop; blocking fsyncs come back as callables."""

    def __init__(self, directory: Path, writer_id: str) -> None:
        self._dir = Path(directory)
        self._writer = writer_id
        self._fd = -1
        self._offset = 0
        self._generation = -1
        self._old: list[Path] = []
        self.state = JournalState()

    def _paths(self) -> list[tuple[int, Path]]:
        pattern = re.compile(rf"^{self._writer}\.(\d{{8}})\.journal$")
        found = []
        for name in os.listdir(self._dir):
            match = pattern.match(name)
            if match:
                found.append((int(match[1]), self._dir / name))
        return sorted(found)

    def open(self) -> JournalState:
        """Replay every generation, then start a new one with a checkpoint (blocking I/O)."""
        self._dir.mkdir(parents=True, exist_ok=True)
        payloads: list[bytes] = []
        generations = self._paths()
        for _, path in generations:
            with open(path, "rb") as handle:
                data = read_all(handle.fileno())
            payloads.extend(e.payload for e in decode_frames(data) if isinstance(e, Frame))
        self.state = replay(payloads)
        self._generation = generations[-1][0] if generations else -1
        self._old = [p for _, p in generations]
        self._start_generation()
        self.compaction()()
        return self.state

    def _start_generation(self) -> None:
        if self._fd >= 0:
            self._old.append(self._path(self._generation))
            os.close(self._fd)
        self._generation += 1
        path = self._path(self._generation)
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        self._offset = 0
        self._write({"t": "checkpoint", "state": self.state.as_json()})

    def _path(self, generation: int) -> Path:
        return self._dir / f"{self._writer}.{generation:08d}.journal"

    def compaction(self) -> Callable[[], None]:
        """The blocking rest of a compaction (run it in a thread): fsync the current
        generation and the directory, then delete the older generations."""
        fd, directory = os.dup(self._fd), self._dir
        old, self._old = self._old, []

        def finish() -> None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            fsync_dir(directory)
            for path in old:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            if old:
                fsync_dir(directory)

        return finish

    def _write(self, entry: dict[str, Any]) -> None:
        frame = encode_frame(orjson.dumps(entry), time.time_ns() // 1000)
        try:
            written = os.pwrite(self._fd, frame, self._offset)
            if written != len(frame):
                raise OSError("short write")
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._offset)
            raise JournalError(f"digest journal write failed: {exc}") from exc
        self._offset += len(frame)

    # --- entries (event loop: one pwrite each) ----------------------------------------

    def add_objects(self, entries: list[ObjectEntry]) -> None:
        """Journal shipped objects; durable once `sync()` (below) returns."""
        for entry in entries:
            self._write({"t": "object", "e": entry.as_json()})
            self.state.objects[entry.key] = entry

    def add_tombstone(self, stone: Tombstone) -> None:
        self._write({"t": "tombstone", "e": stone.as_json()})
        self.state.tombstones.append(stone)

    def prepare(self, prepared: Prepared) -> None:
        self._write(
            {
                "t": "prepared",
                "seq": prepared.digest_seq,
                "key": prepared.key,
                "data": prepared.data.decode(),
            }
        )
        self.state._prepared(prepared)

    def confirm(self) -> Callable[[], None]:
        """The prepared digest is in S3: it becomes the head; a new generation starts.

        Returns the compaction's blocking part (see `compaction`)."""
        prepared = self.state.prepared
        assert prepared is not None
        entry = {
            "t": "confirmed",
            "seq": prepared.digest_seq,
            "key": prepared.key,
            "sha256": sha256_hex(prepared.data),
        }
        self._write(entry)
        self.state.apply(entry)
        self._start_generation()
        return self.compaction()

    def syncer(self) -> Callable[[], None]:
        """A blocking fsync of everything written so far (run it in a thread).

        It works on a duplicate of the descriptor taken now, so a generation
        switch meanwhile cannot close it under the thread."""
        fd = os.dup(self._fd)

        def sync() -> None:
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

        return sync

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(OSError):
                os.fsync(self._fd)
            os.close(self._fd)
            self._fd = -1

"""Writer slots (spool/writers.py) and the digest journal (integrity/journal.py), per rule."""

from __future__ import annotations

from pathlib import Path

import orjson

from sidecar_audit.integrity.digest import ObjectEntry, Tombstone, envelope, sha256_hex
from sidecar_audit.integrity.journal import DigestJournal, Prepared
from sidecar_audit.spool.writers import SLOT_SUFFIX, WRITERS_DIR, WriterSlot, encode_slot


def _entry(key: str, first: int, last: int) -> ObjectEntry:
    return ObjectEntry(key, "ab" * 32, 10, last - first + 1, "0" * 16, ((first, last),), 0)


def test_a_released_slot_is_taken_again_and_its_seqs_continue(tmp_path: Path) -> None:
    slot = WriterSlot.claim(tmp_path)
    assert [slot.assign() for _ in range(3)] == [0, 1, 2]
    slot.close()
    again = WriterSlot.claim(tmp_path)
    assert again.writer_id == slot.writer_id
    assert again.assign() == 3


def test_a_held_slot_is_never_shared(tmp_path: Path) -> None:
    first = WriterSlot.claim(tmp_path)
    second = WriterSlot.claim(tmp_path)  # a second worker on the same spool
    assert first.writer_id != second.writer_id
    assert first.assign() == 0 and second.assign() == 0


def test_an_assigned_seq_is_on_disk_before_it_is_returned(tmp_path: Path) -> None:
    slot = WriterSlot.claim(tmp_path)
    seq = slot.assign()
    path = tmp_path / WRITERS_DIR / f"{slot.writer_id}{SLOT_SUFFIX}"
    assert path.read_bytes() == encode_slot(seq + 1)


def test_a_damaged_slot_gets_a_new_writer_id_never_reused_seqs(tmp_path: Path) -> None:
    slot = WriterSlot.claim(tmp_path)
    slot.assign()
    slot.close()
    path = tmp_path / WRITERS_DIR / f"{slot.writer_id}{SLOT_SUFFIX}"
    path.write_bytes(b"\x00" * 12)
    fresh = WriterSlot.claim(tmp_path)
    assert fresh.writer_id != slot.writer_id
    assert path.with_name(path.name + ".bad").exists()


def test_objects_and_tombstones_survive_a_restart_until_a_digest_takes_them(
    tmp_path: Path,
) -> None:
    journal = DigestJournal(tmp_path, "0" * 16)
    journal.open()
    journal.add_objects([_entry("logs/a", 0, 3), _entry("logs/b", 4, 7)])
    journal.add_tombstone(Tombstone("0" * 16, 8, 8, "spool full"))
    journal.syncer()()
    # no close: as after a SIGKILL
    state = DigestJournal(tmp_path, "0" * 16).open()
    assert sorted(state.objects) == ["logs/a", "logs/b"]
    assert state.tombstones == [Tombstone("0" * 16, 8, 8, "spool full")]


def test_a_prepared_digest_is_put_again_with_the_same_bytes_after_a_crash(
    tmp_path: Path,
) -> None:
    journal = DigestJournal(tmp_path, "0" * 16)
    journal.open()
    journal.add_objects([_entry("logs/a", 0, 3), _entry("logs/b", 4, 7)])
    body = {"objects": [{"key": "logs/a"}], "tombstones": []}
    data = envelope(body, None)
    journal.prepare(Prepared(0, "logs-digest/x-0000000000.json", data))
    state = DigestJournal(tmp_path, "0" * 16).open()
    assert state.prepared == Prepared(0, "logs-digest/x-0000000000.json", data)
    assert sorted(state.objects) == ["logs/b"]  # logs/a is in the prepared digest


def test_a_confirmed_digest_becomes_the_head_and_old_generations_go(tmp_path: Path) -> None:
    journal = DigestJournal(tmp_path, "0" * 16)
    journal.open()
    journal.add_objects([_entry("logs/a", 0, 3)])
    data = envelope({"objects": [{"key": "logs/a"}], "tombstones": []}, None)
    journal.prepare(Prepared(0, "logs-digest/k0.json", data))
    journal.confirm()()
    journal.add_objects([_entry("logs/c", 4, 4)])
    journal.syncer()()
    assert len(list(tmp_path.glob("*.journal"))) == 1
    state = DigestJournal(tmp_path, "0" * 16).open()
    assert state.head is not None and state.head.sha256 == sha256_hex(data)
    assert state.prepared is None and sorted(state.objects) == ["logs/c"]


def test_a_torn_journal_tail_is_skipped_never_invented(tmp_path: Path) -> None:
    journal = DigestJournal(tmp_path, "0" * 16)
    journal.open()
    journal.add_objects([_entry("logs/a", 0, 3)])
    journal.close()
    [path] = tmp_path.glob("*.journal")
    with path.open("ab") as handle:
        handle.write(b"\xf7\xa5\x5a\x1f" + orjson.dumps({"t": "object"})[:5])
    state = DigestJournal(tmp_path, "0" * 16).open()
    assert sorted(state.objects) == ["logs/a"]

"""The journal (``swf_testbed.broker.store``) on real files.

Replay, torn records, compaction, kill -9, a full disk.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from swf_testbed.broker.store import Journal, JournalError

ROOT = Path(__file__).resolve().parents[2]


def _fill(journal: Journal, n: int, start: int = 0) -> list[int]:
    return [
        journal.append(
            "queue",
            "swf.ns.slices",
            f"ID-x:{i}",
            {"msg_id": f"m{i}", "persistent": "true"},
            b"body %d" % i,
        )
        for i in range(start, start + n)
    ]


def _crash(journal: Journal) -> None:
    """What a crash does to a journal in this process: its descriptors go, nothing is written."""
    for fd in (journal._fd, journal._lock_fd):  # noqa: SLF001 -- simulating the crash
        if fd is not None:
            os.close(fd)
    journal._fd = journal._lock_fd = None


def test_a_second_broker_cannot_open_a_journal_in_use(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    with pytest.raises(JournalError, match="in use by another broker"):
        Journal(tmp_path).open()
    journal.close()
    Journal(tmp_path).open()  # free again


def test_a_message_is_read_back_from_its_location(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    _fill(journal, 3)
    where = journal.last_location
    assert where is not None and not journal.committed(where)
    journal.commit()
    assert journal.committed(where)
    stored = journal.read(where)
    assert stored is not None and (stored.message_id, stored.body) == ("ID-x:2", b"body 2")
    journal.ack(where[3])
    assert journal.read(where) is None  # acknowledged: not there any more
    journal.close()
    lazy = Journal(tmp_path)
    replayed = lazy.open(load_bodies=False)
    assert [m.body for m in replayed] == [b"", b""]
    assert [lazy.read(m.location).body for m in replayed if m.location] == [b"body 0", b"body 1"]
    lazy.close()


def test_replay_gives_back_the_unacknowledged_messages_in_order(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    assert journal.open() == []
    seqs = _fill(journal, 10)
    journal.commit()
    for seq in seqs[::2]:
        journal.ack(seq)
    journal.close()

    again = Journal(tmp_path)
    live = again.open()
    assert [m.seq for m in live] == seqs[1::2]
    first = live[0]
    assert (first.kind, first.destination, first.message_id, first.headers, first.body) == (
        "queue",
        "swf.ns.slices",
        "ID-x:1",
        {"msg_id": "m1", "persistent": "true"},
        b"body 1",
    )
    assert again.torn_records == 0
    assert _fill(again, 1)[0] > seqs[-1]  # sequence numbers go on after a restart
    again.close()


def test_what_was_not_committed_is_not_there(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    _fill(journal, 3)
    journal.commit()
    _fill(
        journal, 2, start=3
    )  # buffered only: a crash now loses them, and they were never confirmed
    assert journal.pending > 0
    _crash(journal)
    assert [m.message_id for m in Journal(tmp_path).open()] == ["ID-x:0", "ID-x:1", "ID-x:2"]


@pytest.mark.parametrize("cut", [1, 5, 12, 40])
def test_a_torn_last_record_is_skipped_and_cut_off(tmp_path: Path, cut: int) -> None:
    journal = Journal(tmp_path)
    journal.open()
    _fill(journal, 5)
    journal.commit()
    journal.close()
    [segment] = journal.segments()
    whole = segment.stat().st_size
    os.truncate(segment, whole - cut)  # the crash tore the last write

    again = Journal(tmp_path)
    live = again.open()
    assert [m.message_id for m in live] == [f"ID-x:{i}" for i in range(4)]
    assert again.torn_records == 1
    _fill(again, 1, start=10)  # appends start on a record boundary again
    again.close()
    assert [m.message_id for m in Journal(tmp_path).open()][-1] == "ID-x:10"


def test_garbage_after_the_last_record_is_skipped(tmp_path: Path) -> None:
    journal = Journal(tmp_path)
    journal.open()
    _fill(journal, 2)
    journal.close()
    with open(journal.segments()[-1], "ab") as f:
        f.write(b"\x07\x00\x00\x00\xde\xad\xbe\xef\x01abc")  # a header whose CRC does not match
    again = Journal(tmp_path)
    assert [m.message_id for m in again.open()] == ["ID-x:0", "ID-x:1"]
    assert again.torn_records == 1


def test_acknowledged_segments_are_compacted_oldest_first(tmp_path: Path) -> None:
    journal = Journal(tmp_path, segment_bytes=1024)
    journal.open()
    seqs: list[int] = []
    for batch in range(10):
        seqs += _fill(journal, 10, start=batch * 10)
        journal.commit()
    assert len(journal.segments()) >= 5
    keep = seqs[15]  # one message of an early segment stays unacknowledged
    for seq in seqs:
        if seq != keep:
            journal.ack(seq)
    journal.commit()
    # the segments before the one holding `keep` are gone;
    # that one and the later ones (their ACKs) stay
    remaining = journal.segments()
    assert 1 < len(remaining) < 10
    journal.ack(keep)
    journal.commit()
    _fill(journal, 1, start=500)  # a new message, in the current segment
    journal.commit()
    assert len(journal.segments()) <= 2
    journal.close()
    assert [m.message_id for m in Journal(tmp_path, segment_bytes=1024).open()] == ["ID-x:500"]


_WRITER = textwrap.dedent(r"""
    import sys
    from pathlib import Path
    from swf_testbed.broker.store import Journal, JournalError

    journal = Journal(Path(sys.argv[1]), segment_bytes=64 * 1024)
    journal.open()
    i = 0
    while True:
        for _ in range(50):  # a group of sends, committed together, then confirmed
            journal.append("queue", "q", f"ID-k:{i}", {}, b"x" * 100)
            i += 1
        journal.commit()
        print(i, flush=True)  # everything below i is confirmed
""")


def test_kill_9_during_group_commits_loses_no_confirmed_message(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(tmp_path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    assert proc.stdout is not None
    confirmed = 0
    try:
        for line in proc.stdout:
            confirmed = int(line)
            if confirmed >= 5000:  # well into its group commits, segments rotated
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    ids = [
        int(m.message_id.split(":")[1]) for m in Journal(tmp_path, segment_bytes=64 * 1024).open()
    ]
    assert confirmed >= 5000
    assert ids == list(range(len(ids)))  # in order, no gap, no duplicate
    assert (
        len(ids) >= confirmed
    )  # every confirmed one; a group in flight at the kill may be there or not


_FULL = textwrap.dedent(r"""
    import resource, signal, sys
    from pathlib import Path
    from swf_testbed.broker.store import Journal, JournalError

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, 256 * 1024))
    journal = Journal(Path(sys.argv[1]))
    journal.open()
    try:
        for i in range(100):
            journal.append("queue", "q", f"ID-f:{i}", {}, b"y" * 10_000)
            journal.commit()
    except JournalError as exc:
        print("REPORTED", exc, flush=True)

        sys.exit(3)
    print("NOT REPORTED")
""")


def test_a_full_disk_is_reported(tmp_path: Path) -> None:
    """A file-size limit (``ulimit -f``) in a subprocess stands for a full disk.

    Not the machine's disk.
    """
    done = subprocess.run(
        [sys.executable, "-c", _FULL, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
        timeout=60,
        check=False,
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "REPORTED" in done.stdout and "cannot write the journal" in done.stdout, done.stdout
    assert "too large" in done.stdout.lower()
    # the failed write was cut off: everything committed before it replays,
    # nothing after it is hidden
    journal = Journal(tmp_path)
    live = journal.open()
    assert live and [m.message_id for m in live] == [f"ID-f:{i}" for i in range(len(live))]
    assert journal.torn_records == 0

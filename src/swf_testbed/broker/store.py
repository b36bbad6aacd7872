"""The journal: persistent messages in append-only segment files (format: docs/broker.md).

A record is ``length (4) | crc32 (4) | kind (1) | payload``, little-endian;
the CRC covers kind and payload. A MESSAGE record holds the message's
journal sequence number, its destination, broker message-id, headers and
body; an ACK record holds the sequence number of a message that is done.
Records are buffered by :meth:`Journal.append` / :meth:`Journal.ack` and
made durable together by :meth:`Journal.commit` (one write and one
``fdatasync`` for everything since the last commit: group commit).

:meth:`Journal.open` replays the segments in order and returns the messages
not acknowledged, in the order they were written. A torn last record (a
crash in the middle of a write) is detected by its length or CRC, skipped
and cut off, never fatal. Segments are rotated at ``segment_bytes``; the
oldest segment is deleted once every message in it is acknowledged
(compaction), so the journal holds about what is still unacknowledged.

A message can be read back from where it was written (:meth:`Journal.read`):
a queue over its memory limit keeps only the location of a message and pages
it in when its consumers catch up, and :meth:`Journal.open` with
``load_bodies=False`` replays the locations without holding the bodies.

The broker uses it with ``--data-dir`` (``Broker(data_dir=...)``), for queues
and durable subscriptions. One broker per journal: :meth:`Journal.open` takes
an exclusive lock on ``lock`` in the directory.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("swf_testbed.broker")

_HEADER = struct.Struct("<IIB")
_SEQ = struct.Struct("<Q")
_META_LEN = struct.Struct("<I")
MESSAGE, ACK = 1, 2
SUFFIX = ".seg"


class JournalError(OSError):
    """The journal cannot be written (disk full, file too large, I/O error): what and where."""


Location = tuple[str, int, int, int]
"""Where a message record is: (segment path, offset, record length, sequence number)."""


@dataclass(slots=True)
class StoredMessage:
    """A persistent message as the journal keeps it."""

    seq: int
    kind: str  # "queue" or "topic" (a durable subscription's copy)
    destination: (
        str  # queue name, or "<client-id>\x00<subscription name>" of a durable subscription
    )
    message_id: str
    headers: dict[str, str]
    body: bytes
    location: Location | None = None  # set by open(load_bodies=False): read the body from there


def _record(kind: int, payload: bytes) -> bytes:
    return _HEADER.pack(len(payload), zlib.crc32(payload, kind), kind) + payload


def _encode_message(msg: StoredMessage) -> bytes:
    meta = json.dumps(
        [msg.kind, msg.destination, msg.message_id, msg.headers], separators=(",", ":")
    ).encode()
    return _SEQ.pack(msg.seq) + _META_LEN.pack(len(meta)) + meta + msg.body


def _decode_message(payload: bytes | memoryview, body: bool = True) -> StoredMessage:
    (seq,) = _SEQ.unpack_from(payload)
    (meta_len,) = _META_LEN.unpack_from(payload, _SEQ.size)
    start = _SEQ.size + _META_LEN.size
    kind, destination, message_id, headers = json.loads(bytes(payload[start : start + meta_len]))
    data = bytes(payload[start + meta_len :]) if body else b""
    return StoredMessage(seq, kind, destination, message_id, headers, data)


class Journal:
    """Append-only segment files in ``directory``; :meth:`open` first, then append/ack/commit."""

    def __init__(self, directory: Path, *, segment_bytes: int = 64 * 1024 * 1024) -> None:
        self.directory = Path(directory)
        self.segment_bytes = segment_bytes
        self.next_seq = 1
        self.torn_records = 0  # torn tails cut off at open
        self._buffer: list[bytes] = []
        self._buffered = 0
        self._uncommitted: list[int] = []  # messages appended since the last commit
        self._fd: int | None = None
        self._current: Path | None = None
        self._current_size = 0
        self._segments: list[Path] = []  # oldest first; the last one is written
        self._live: dict[Path, set[int]] = {}  # unacknowledged sequence numbers per segment
        self._segment_of: dict[int, Path] = {}
        self._readers: dict[str, int] = {}  # read descriptors of segments (paging in)
        self._lock_fd: int | None = None
        self.last_location: Location | None = None  # of the last message appended

    def _lock(self) -> None:
        fd = os.open(self.directory / "lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise JournalError(
                0, f"the journal {self.directory} is in use by another broker (locked)"
            ) from None
        self._lock_fd = fd

    # ------------------------------------------------------------------ replay

    def open(self, *, load_bodies: bool = True) -> list[StoredMessage]:
        """Replay every segment; the unacknowledged messages, in the order written.

        ``load_bodies=False``: the messages carry their :attr:`~StoredMessage.location`
        and an empty body (:meth:`read` gets the rest), so that a journal larger
        than memory can be replayed.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock()
        live: dict[int, StoredMessage] = {}
        paths = sorted(self.directory.glob(f"*{SUFFIX}"))
        for index, path in enumerate(paths):
            good_end = self._replay_segment(
                path, live, last=index == len(paths) - 1, bodies=load_bodies
            )
            if index == len(paths) - 1 and good_end < path.stat().st_size:
                with open(
                    path, "r+b"
                ) as f:  # cut the torn tail, so appends start on a record boundary
                    f.truncate(good_end)
                    os.fsync(f.fileno())
        self._segments = paths
        for path in paths:
            self._live.setdefault(path, set())
        for seq in live:
            self._live[self._segment_of[seq]].add(seq)
        self._drop_done_segments(keep_last=False)
        if self._segments:
            self._reopen_last()
        else:
            self._start_segment()
        return sorted(live.values(), key=lambda m: m.seq)

    def _replay_segment(
        self, path: Path, live: dict[int, StoredMessage], *, last: bool, bodies: bool
    ) -> int:
        data = memoryview(path.read_bytes())
        pos = 0
        while pos < len(data):
            end = pos + _HEADER.size
            if end > len(data):
                break
            length, crc, kind = _HEADER.unpack_from(data, pos)
            payload = data[end : end + length]
            if (
                len(payload) < length
                or length < _SEQ.size
                or kind not in (MESSAGE, ACK)
                or zlib.crc32(payload, kind) != crc
            ):
                break
            (seq,) = _SEQ.unpack_from(payload)
            if kind == MESSAGE:
                stored = _decode_message(payload, bodies)
                if not bodies:
                    stored.location = (str(path), pos, _HEADER.size + length, seq)
                live[seq] = stored
                self._segment_of[seq] = path
            else:
                live.pop(seq, None)
                self._segment_of.pop(seq, None)
            self.next_seq = max(self.next_seq, seq + 1)
            pos = end + length
        if pos < len(data):
            if last:
                self.torn_records += 1
                log.warning(
                    "journal %s: torn last record at byte %d (a crash mid-write); skipped",
                    path,
                    pos,
                )
            else:
                log.error(
                    "journal %s: unreadable record at byte %d of %d; "
                    "the rest of this segment is skipped",
                    path,
                    pos,
                    len(data),
                )
        return pos

    # ------------------------------------------------------------------ writing

    def append(
        self, kind: str, destination: str, message_id: str, headers: dict[str, str], body: bytes
    ) -> int:
        """Buffer a message; its sequence number. Durable after the next :meth:`commit`."""
        seq = self.next_seq
        self.next_seq += 1
        record = _record(
            MESSAGE,
            _encode_message(StoredMessage(seq, kind, destination, message_id, headers, body)),
        )
        assert self._current is not None
        # the buffer is written contiguously at the end of the current segment at commit
        self.last_location = (
            str(self._current),
            self._current_size + self._buffered,
            len(record),
            seq,
        )
        self._add(record)
        self._segment_of[seq] = self._current
        self._live[self._current].add(seq)
        self._uncommitted.append(seq)
        return seq

    def ack(self, seq: int) -> None:
        """Buffer the acknowledgement of message ``seq`` (compacted once its segment is done)."""
        segment = self._segment_of.pop(seq, None)
        if segment is None:
            return
        self._live[segment].discard(seq)
        self._add(_record(ACK, _SEQ.pack(seq)))

    def is_live(self, seq: int) -> bool:
        """Whether message ``seq`` is in the journal and not acknowledged."""
        return seq in self._segment_of

    def committed(self, location: Location) -> bool:
        """Whether the record at ``location`` is on disk (else it waits for the next commit)."""
        path, offset, length, _seq = location
        return path != str(self._current) or offset + length <= self._current_size

    def read(self, location: Location) -> StoredMessage | None:
        """The message written at ``location`` (committed); None if it is not there any more.

        None when the record does not check (its commit failed and the space was
        reused, or the file was damaged) or holds another message.
        """
        path, offset, length, seq = location
        if not self.is_live(seq):
            return None
        fd = self._readers.get(path)
        try:
            if fd is None:
                fd = self._readers[path] = os.open(path, os.O_RDONLY)
            data = os.pread(fd, length, offset)
        except OSError as exc:
            log.error("journal %s: cannot read the message at byte %d: %s", path, offset, exc)
            return None
        if len(data) < _HEADER.size:
            return None
        size, crc, kind = _HEADER.unpack_from(data)
        payload = memoryview(data)[_HEADER.size :]
        if (
            kind != MESSAGE
            or size != len(payload)
            or zlib.crc32(payload, kind) != crc
            or _SEQ.unpack_from(payload)[0] != seq
        ):
            log.error("journal %s: no message %d at byte %d (skipped)", path, seq, offset)
            return None
        return _decode_message(payload)

    @property
    def pending(self) -> int:
        """Bytes buffered since the last commit."""
        return self._buffered

    def commit(self) -> None:
        """Write what was buffered and ``fdatasync`` it (one sync for the whole group)."""
        if not self._buffer:
            return
        data = b"".join(self._buffer)
        self._buffer.clear()
        self._buffered = 0
        assert self._fd is not None and self._current is not None
        try:
            view = memoryview(data)
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fdatasync(self._fd)
        except OSError as exc:
            self._undo_failed_commit()
            raise JournalError(
                exc.errno, f"cannot write the journal {self._current}: {exc.strerror}"
            ) from exc
        self._uncommitted.clear()
        self._current_size += len(data)
        if self._current_size >= self.segment_bytes:
            self._start_segment()
        self._drop_done_segments(keep_last=True)

    def close(self) -> None:
        try:
            self.commit()
        finally:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            for fd in self._readers.values():
                os.close(fd)
            self._readers.clear()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def segments(self) -> list[Path]:
        return list(self._segments)

    def size(self) -> int:
        """Bytes on disk (for the broker's statistics)."""
        return sum(p.stat().st_size for p in self._segments if p.exists())

    # ------------------------------------------------------------------ internals

    def _add(self, record: bytes) -> None:
        self._buffer.append(record)
        self._buffered += len(record)

    def _undo_failed_commit(self) -> None:
        """A commit failed part-way: cut the partial write, forget the messages it held.

        Without the cut, a torn record in the middle of the segment would hide
        every record committed after it at the next replay.
        """
        assert self._fd is not None
        try:
            os.ftruncate(self._fd, self._current_size)
        except OSError as exc:
            log.error("journal %s: cannot cut a failed write (%s)", self._current, exc)
        for seq in self._uncommitted:
            segment = self._segment_of.pop(seq, None)
            if segment is not None:
                self._live[segment].discard(seq)
        self._uncommitted.clear()

    def _start_segment(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
        number = int(self._segments[-1].stem) + 1 if self._segments else 1
        path = self.directory / f"{number:010d}{SUFFIX}"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        dir_fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the new file's name is durable too
        finally:
            os.close(dir_fd)
        self._segments.append(path)
        self._live[path] = set()
        self._current = path
        self._current_size = 0

    def _reopen_last(self) -> None:
        path = self._segments[-1]
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)
        self._current = path
        self._current_size = path.stat().st_size

    def _drop_done_segments(self, *, keep_last: bool) -> None:
        """Delete the oldest segments while every message in them is acknowledged.

        Oldest first only: a later segment may hold the ACKs of an older one's
        messages, so it must outlive it.
        """
        while self._segments and not self._live.get(self._segments[0]):
            if keep_last and len(self._segments) == 1:
                return
            path = self._segments.pop(0)
            self._live.pop(path, None)
            if path == self._current:
                self._current = None
            fd = self._readers.pop(str(path), None)
            if fd is not None:
                os.close(fd)
            path.unlink(missing_ok=True)

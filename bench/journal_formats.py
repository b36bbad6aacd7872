"""Journal formats for the embedded broker, measured before choosing one (issue 12).

The broker must write each persistent message durably before it confirms the
send, and forget it once acknowledged. Three candidate formats, each doing
exactly that work on the same messages, in the same directory, in one run:

* ``segment``: append-only segment files of records ``length | crc32 | kind |
  payload``, one ``fdatasync`` per commit; an acknowledgement is a small
  record appended to the same file (compaction later drops whole segments);
* ``sqlite-wal``: SQLite in WAL mode, ``synchronous=FULL`` (a commit is
  durable), one transaction per commit; an acknowledgement is a ``DELETE``;
* ``lmdb`` (when the ``lmdb`` package is installed): one write transaction
  per commit (``sync=True``); an acknowledgement is a ``delete``.

For each, two commit policies: one commit per message (what a naive broker
does) and group commit (a commit per batch of ``--batch`` messages, as the
broker would do for the messages that arrived during one event-loop turn).
Measured: messages made durable per second, acknowledgements per second,
and the time to read everything back with its checksum (replay after a
crash). Ratios are against ``segment`` with one commit per message, measured
in the same run. Bodies are ~200 B JSON, as the testbed's messages.

The last line printed is one JSON object with all figures.

Usage: ``python bench/journal_formats.py [--quick] [--messages N] [--batch N] [--dir PATH]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import struct
import tempfile
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

_HEADER = struct.Struct("<IIB")  # payload length, crc32 of kind+payload, kind
_MESSAGE, _ACK = 1, 2


@dataclass
class Figures:
    write_per_s: float
    ack_per_s: float
    replay_s: float
    records: int


def _bodies(n: int) -> list[bytes]:
    return [
        json.dumps(
            {
                "msg_type": "slice",
                "msg_id": f"bench-{i:08d}",
                "namespace": "bench",
                "run_id": 1,
                "slice_id": i,
                "tf_first": 0,
                "tf_last": 9,
                "tf_filename": "swf.000001.000001.tf",
                "padding": "x" * 40,
            }
        ).encode()
        for i in range(n)
    ]


def _batches(n: int, batch: int) -> list[range]:
    return [range(i, min(i + batch, n)) for i in range(0, n, batch)]


# --------------------------------------------------------------------------- segment files


def _segment(path: Path, bodies: list[bytes], batch: int) -> Figures:
    path.mkdir()
    seg = path / "00000001.seg"
    fd = os.open(seg, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:

        def record(kind: int, payload: bytes) -> bytes:
            return _HEADER.pack(len(payload), zlib.crc32(payload, kind), kind) + payload

        t0 = time.perf_counter()
        for chunk in _batches(len(bodies), batch):
            os.write(
                fd, b"".join(record(_MESSAGE, struct.pack("<Q", i) + bodies[i]) for i in chunk)
            )
            os.fdatasync(fd)
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for chunk in _batches(len(bodies), batch):
            os.write(fd, b"".join(record(_ACK, struct.pack("<Q", i)) for i in chunk))
            os.fdatasync(fd)
        ack_s = time.perf_counter() - t0
    finally:
        os.close(fd)
    t0 = time.perf_counter()
    data = seg.read_bytes()
    pos = records = 0
    live: set[int] = set()
    while pos + _HEADER.size <= len(data):
        length, crc, kind = _HEADER.unpack_from(data, pos)
        payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
        if len(payload) < length or zlib.crc32(payload, kind) != crc:
            break  # a torn last record
        (mid,) = struct.unpack_from("<Q", payload)
        if kind == _MESSAGE:
            live.add(mid)
        else:
            live.discard(mid)
        records += 1
        pos += _HEADER.size + length
    replay_s = time.perf_counter() - t0
    assert records == 2 * len(bodies) and not live, (records, len(live))
    return Figures(len(bodies) / write_s, len(bodies) / ack_s, replay_s, records)


# --------------------------------------------------------------------------- SQLite, WAL


def _sqlite(path: Path, bodies: list[bytes], batch: int) -> Figures:
    path.mkdir()
    db = sqlite3.connect(path / "journal.db", isolation_level=None)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE m (id INTEGER PRIMARY KEY, body BLOB NOT NULL)")
        t0 = time.perf_counter()
        for chunk in _batches(len(bodies), batch):
            db.execute("BEGIN")
            db.executemany("INSERT INTO m VALUES (?, ?)", ((i, bodies[i]) for i in chunk))
            db.execute("COMMIT")
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = sum(1 for _ in db.execute("SELECT id, body FROM m ORDER BY id"))
        replay_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for chunk in _batches(len(bodies), batch):
            db.execute("BEGIN")
            db.executemany("DELETE FROM m WHERE id = ?", ((i,) for i in chunk))
            db.execute("COMMIT")
        ack_s = time.perf_counter() - t0
        left = db.execute("SELECT count(*) FROM m").fetchone()[0]
    finally:
        db.close()
    assert rows == len(bodies) and left == 0, (rows, left)
    return Figures(len(bodies) / write_s, len(bodies) / ack_s, replay_s, rows)


# --------------------------------------------------------------------------- LMDB


def _lmdb(path: Path, bodies: list[bytes], batch: int) -> Figures:
    import lmdb  # optional: measured only when installed

    env = lmdb.open(str(path), map_size=1 << 30, sync=True, metasync=True)
    try:
        t0 = time.perf_counter()
        for chunk in _batches(len(bodies), batch):
            with env.begin(write=True) as txn:
                for i in chunk:
                    txn.put(struct.pack(">Q", i), bodies[i])
        write_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        with env.begin() as txn:
            rows = sum(1 for _ in txn.cursor())
        replay_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for chunk in _batches(len(bodies), batch):
            with env.begin(write=True) as txn:
                for i in chunk:
                    txn.delete(struct.pack(">Q", i))
        ack_s = time.perf_counter() - t0
        with env.begin() as txn:
            left = txn.stat()["entries"]
    finally:
        env.close()
    assert rows == len(bodies) and left == 0, (rows, left)
    return Figures(len(bodies) / write_s, len(bodies) / ack_s, replay_s, rows)


def _lmdb_available() -> bool:
    try:
        import lmdb  # noqa: F401 -- only whether it imports
    except ImportError:
        return False
    return True


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a small run: 2 000 messages")
    parser.add_argument(
        "--messages", type=int, default=None, help="messages per format (default 20 000)"
    )
    parser.add_argument(
        "--batch", type=int, default=64, help="messages per group commit (default 64)"
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where to write (default a temporary directory; the disk is what is measured)",
    )
    args = parser.parse_args(argv)
    n = args.messages or (2_000 if args.quick else 20_000)
    console = Console(stderr=True, soft_wrap=True)
    bodies = _bodies(n)
    formats: dict[str, Callable[[Path, list[bytes], int], Figures]] = {
        "segment": _segment,
        "sqlite-wal": _sqlite,
    }
    if _lmdb_available():
        formats["lmdb"] = _lmdb
    else:
        console.print("lmdb not installed: measuring segment files and SQLite only")
    base = Path(tempfile.mkdtemp(prefix="swf-journal-bench-", dir=args.dir))
    results: dict[str, Figures] = {}
    try:
        for name, run in formats.items():
            for batch in (1, args.batch):
                key = f"{name}/{batch}"
                # one commit per message is slow on a real disk:
                # measure it on a tenth of the messages
                sample = bodies if batch > 1 else bodies[: max(200, n // 10)]
                results[key] = run(base / key.replace("/", "-"), sample, batch)
                f = results[key]
                console.print(
                    f"{key:>16}: {f.write_per_s:10,.0f} writes/s {f.ack_per_s:10,.0f} acks/s "
                    f"replay {f.replay_s * 1000:7.1f} ms ({len(sample)} messages)"
                )
    finally:
        shutil.rmtree(base, ignore_errors=True)

    baseline = results["segment/1"]
    table = Table(
        title=f"Journal formats: ~{len(bodies[-1])} B messages, "
        f"commit per message vs per {args.batch}"
    )
    for column in (
        "format / batch",
        "durable writes/s",
        "× segment/1",
        "acks/s",
        "× segment/1",
        "replay µs/msg",
    ):
        table.add_column(column, justify="right")
    figures: dict[str, Any] = {}
    for key, f in results.items():
        per_msg = f.replay_s / f.records * 1e6
        write_ratio = f.write_per_s / baseline.write_per_s
        ack_ratio = f.ack_per_s / baseline.ack_per_s
        table.add_row(
            key,
            f"{f.write_per_s:,.0f}",
            f"{write_ratio:.2f}",
            f"{f.ack_per_s:,.0f}",
            f"{ack_ratio:.2f}",
            f"{per_msg:.2f}",
        )
        figures[key] = {
            "writes_per_s": round(f.write_per_s, 1),
            "acks_per_s": round(f.ack_per_s, 1),
            "write_ratio": round(write_ratio, 3),
            "ack_ratio": round(ack_ratio, 3),
            "replay_us_per_record": round(per_msg, 3),
        }
    Console(width=120).print(table)
    print(
        json.dumps(
            {
                "benchmark": "journal_formats",
                "messages": n,
                "batch": args.batch,
                "baseline": "segment/1",
                "results": figures,
            }
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

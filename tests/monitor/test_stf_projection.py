"""The STF file projections (stf_gen, stf_ready, processing_complete), column by column: what an
STF row holds after its messages in one batch and across batches, in any order."""

from __future__ import annotations

from typing import Any

import pytest

from swf_testbed.monitor.api import models as m

pytestmark = pytest.mark.django_db

NAME = "swf.000001.000001.stf"
GEN = {
    "filename": NAME,
    "sequence": 1,
    "size_bytes": 2_000,
    "checksum": "0a0b0c0d",
    "tf_count": 10,
    "start": "2026-01-01T00:00:00Z",
    "end": "2026-01-01T00:00:01Z",
}
READY = {
    "filename": NAME,
    "url": "file:///data/f.stf",
    "sequence": 1,
    "size_bytes": 3_000,
    "checksum": "00000001",
}
DONE = {"filename": NAME, "outputs": ["out-1"], "processing_time_s": 2.5}


def _row() -> m.StfFile:
    return m.StfFile.objects.get()


def test_gen_ready_and_processed_in_one_batch(record: Any, make_message: Any) -> None:
    record(
        make_message("stf_gen", **GEN),
        make_message("stf_ready", **READY),
        make_message("processing_complete", **DONE),
    )
    stf = _row()
    assert stf.status == "processed" and stf.run.run_number == 1
    # stf_ready's figures came after stf_gen's; what only stf_gen says is kept
    assert (stf.url, stf.file_size_bytes, stf.checksum) == ("file:///data/f.stf", 3_000, "00000001")
    assert (stf.sequence, stf.tf_count, stf.daq_state, stf.daq_substate) == (
        1,
        10,
        "run",
        "physics",
    )
    assert stf.metadata == {
        "start": "2026-01-01T00:00:00+00:00",
        "end": "2026-01-01T00:00:01+00:00",
        "outputs": ["out-1"],
        "processing_time_s": 2.5,
    }


def test_out_of_order_the_status_never_moves_back_and_metadata_merges(
    record: Any, make_message: Any
) -> None:
    record(make_message("processing_complete", **DONE))
    stf = _row()
    assert stf.status == "processed" and stf.metadata == {
        "outputs": ["out-1"],
        "processing_time_s": 2.5,
    }
    assert stf.file_size_bytes is None and stf.checksum == ""
    created, updated = stf.created_at, stf.updated_at

    record(make_message("stf_gen", **GEN))  # late: its figures, not its status
    stf = _row()
    assert (stf.status, stf.file_size_bytes, stf.checksum) == ("processed", 2_000, "0a0b0c0d")
    assert stf.metadata["outputs"] == ["out-1"] and stf.metadata["start"].startswith("2026-01-01")
    assert stf.created_at == created and stf.updated_at > updated

    record(make_message("stf_ready", **READY))  # registered only a generated file
    stf = _row()
    assert (stf.status, stf.url) == ("processed", "file:///data/f.stf")


def test_ready_registers_a_generated_file_and_processing_again_replaces_its_outputs(
    record: Any, make_message: Any
) -> None:
    record(make_message("stf_gen", **GEN))
    assert _row().status == "generated"
    record(make_message("stf_ready", **READY))
    assert _row().status == "registered"
    record(make_message("processing_complete", **DONE))
    record(make_message("processing_complete", **{**DONE, "outputs": ["out-2"]}))
    stf = _row()
    assert stf.status == "processed" and stf.metadata["outputs"] == ["out-2"]
    assert stf.metadata["start"].startswith("2026-01-01")
    assert m.StfFile.objects.count() == 1

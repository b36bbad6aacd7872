"""Tools about runs and their data: runs, STF files, TF slices."""

from __future__ import annotations

from mcp.server.mcpserver.exceptions import ToolError

from swf_testbed.monitor.mcp_server.common import (
    DEFAULT_LIMIT,
    RUN_FIELDS,
    SLICE_FIELDS,
    STF_FIELDS,
    api_models,
    dumps,
    get_one,
    in_range,
    page_of,
    text_arg,
    where,
)


def list_runs(
    namespace: str = "",
    execution_id: str = "",
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    start_time: str | None = None,
    end_time: str | None = None,
) -> str:
    qs = where(
        api_models().Run.objects.all(),
        execution__namespace_id=text_arg("namespace", namespace),
        execution_id=text_arg("execution_id", execution_id),
    )
    qs = in_range(qs, "start_time", start_time, end_time)
    return page_of(qs, RUN_FIELDS, limit, offset, order=("-run_number",))


def get_run(run_number: int) -> str:
    m = api_models()
    row = m.Run.objects.filter(run_number=run_number).values(*RUN_FIELDS, "run_conditions").first()
    if row is None:
        raise ToolError(f"no run {run_number}")
    row["state"] = (
        m.RunState.objects.filter(run_number=run_number)
        .values(
            "phase",
            "state",
            "substate",
            "stf_samples_received",
            "slices_created",
            "slices_completed",
            "slices_failed",
            "state_changed_at",
        )
        .first()
    )
    row["stf_files"] = m.StfFile.objects.filter(run__run_number=run_number).count()
    return dumps(row)


def list_stf_files(
    run_number: int | None = None,
    namespace: str = "",
    status: str = "",
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    start_time: str | None = None,
    end_time: str | None = None,
) -> str:
    qs = where(
        api_models().StfFile.objects.all(),
        run__run_number=run_number,
        run__execution__namespace_id=text_arg("namespace", namespace),
        status=text_arg("status", status),
    )
    qs = in_range(qs, "created_at", start_time, end_time)
    return page_of(qs, STF_FIELDS, limit, offset, order=("-created_at",))


def get_stf_file(stf_filename: str) -> str:
    name = text_arg("stf_filename", stf_filename, 255)
    return get_one(
        api_models().StfFile.objects.filter(stf_filename=name),
        f"STF file {name!r}",
        [*STF_FIELDS, "metadata"],
    )


def list_tf_slices(
    run_number: int | None = None,
    status: str = "",
    stf_filename: str = "",
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
    start_time: str | None = None,
    end_time: str | None = None,
) -> str:
    qs = where(
        api_models().TFSlice.objects.all(),
        run_number=run_number,
        status=text_arg("status", status),
        stf_filename=text_arg("stf_filename", stf_filename, 255),
    )
    qs = in_range(qs, "created_at", start_time, end_time)
    return page_of(qs, SLICE_FIELDS, limit, offset, order=("run_number", "tf_filename", "slice_id"))


def get_tf_slice(slice_pk: int) -> str:
    return get_one(
        api_models().TFSlice.objects.filter(id=slice_pk),
        f"slice with id {slice_pk}",
        [*SLICE_FIELDS, "error"],
    )

"""Serializers of runs, files, slices, workers and the run state."""

from __future__ import annotations

from typing import Any, ClassVar

from rest_framework import serializers

from swf_testbed.monitor.api import models as m
from swf_testbed.monitor.api.serializers.fields import (
    MergingCreate,
    ModelSerializer,
    NamespaceField,
)


class RunSerializer(MergingCreate, ModelSerializer[m.Run]):
    """A POSTed run number already known (from ``run_imminent``) is the same run: merged, not
    refused.

    Without an execution in the payload (the v28 data agent sends none), the
    run is linked to the one its run state names (``metadata.execution_id``
    of ``POST /run-states/``), when known; a later message or run state links it otherwise.
    """

    namespace = NamespaceField()

    class Meta:
        model = m.Run
        fields = [
            "run_id",
            "run_number",
            "namespace",
            "execution",
            "start_time",
            "end_time",
            "run_conditions",
            "total_stf_files",
        ]
        read_only_fields = ["run_id"]
        extra_kwargs: ClassVar[dict[str, Any]] = {
            "run_number": {"validators": []}
        }  # unique, but a repeat merges (see create)

    def create(self, validated_data: dict[str, Any]) -> m.Run:
        number = validated_data["run_number"]

        def create() -> m.Run:
            data = dict(validated_data)
            if data.get("execution") is None:
                data["execution"] = m.RunState.execution_named(number)
            run = m.Run(**data)
            run.adopt(run.execution)
            run.save()
            m.RunState.objects.filter(run_number=number, run__isnull=True).update(run=run)
            return run

        def merge(run: m.Run) -> m.Run:
            start = validated_data.get("start_time")
            if start is not None and start < run.start_time:
                run.start_time = start  # the earliest that either source knows
            for name in ("end_time", "total_stf_files", "execution", "namespace"):
                if validated_data.get(name) is not None:
                    setattr(run, name, validated_data[name])
            if validated_data.get("run_conditions"):
                run.run_conditions = {
                    **(run.run_conditions or {}),
                    **validated_data["run_conditions"],
                }
            run.adopt(run.execution or m.RunState.execution_named(number))
            run.save()
            return run

        return self.create_or_merge(
            lambda: m.Run.objects.select_for_update().filter(run_number=number).first(),
            create,
            merge,
        )


_FILE_PROGRESS: list[str] = [
    m.FileStatus.GENERATED,
    m.FileStatus.REGISTERED,
    m.FileStatus.PROCESSING,
    m.FileStatus.PROCESSED,
    m.FileStatus.FAILED,
    m.FileStatus.DONE,
]


class StfFileSerializer(MergingCreate, ModelSerializer[m.StfFile]):
    """A POSTed file name already known (from ``stf_gen``) is the same file: the POST fills it in.

    Its status never moves back (a file the DAQ generated becomes registered;
    one already processed stays processed).
    """

    run_number = serializers.IntegerField(source="run.run_number", read_only=True)

    class Meta:
        model = m.StfFile
        fields = [
            "file_id",
            "run",
            "run_number",
            "stf_filename",
            "file_size_bytes",
            "checksum",
            "status",
            "machine_state",
            "daq_state",
            "daq_substate",
            "sequence",
            "tf_count",
            "url",
            "generated_at",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["file_id", "created_at", "updated_at"]
        extra_kwargs: ClassVar[dict[str, Any]] = {
            "stf_filename": {"validators": []}
        }  # unique, but a repeat merges (see create)

    def create(self, validated_data: dict[str, Any]) -> m.StfFile:
        name = validated_data["stf_filename"]

        def merge(stf: m.StfFile) -> m.StfFile:
            for field, value in validated_data.items():
                if field == "metadata":
                    stf.metadata = {**(stf.metadata or {}), **(value or {})}
                elif field == "status":
                    if _FILE_PROGRESS.index(value) >= _FILE_PROGRESS.index(stf.status):
                        stf.status = value
                elif field not in ("run", "stf_filename"):
                    setattr(stf, field, value)
            stf.save()
            return stf

        return self.create_or_merge(
            lambda: m.StfFile.objects.select_for_update().filter(stf_filename=name).first(),
            lambda: m.StfFile.objects.create(**validated_data),
            merge,
        )


class FastMonFileSerializer(ModelSerializer[m.FastMonFile]):
    class Meta:
        model = m.FastMonFile
        fields = [
            "tf_file_id",
            "stf_file",
            "tf_filename",
            "tf_first",
            "tf_last",
            "tf_count",
            "file_size_bytes",
            "checksum",
            "status",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["tf_file_id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        first, last = attrs.get("tf_first"), attrs.get("tf_last")
        if first is not None and last is not None and last < first:
            raise serializers.ValidationError({"tf_last": "must not be less than tf_first"})
        return attrs


class TFSliceSerializer(ModelSerializer[m.TFSlice]):
    class Meta:
        model = m.TFSlice
        fields = [
            "id",
            "sample",
            "slice_id",
            "tf_first",
            "tf_last",
            "tf_count",
            "tf_filename",
            "stf_filename",
            "run_number",
            "status",
            "retries",
            "assigned_worker",
            "assigned_at",
            "completed_at",
            "processing_time_s",
            "error",
            "metadata",
            "created_at",
            "updated_at",
        ]
        read_only_fields = ["id", "created_at", "updated_at"]

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        first = attrs.get("tf_first", getattr(self.instance, "tf_first", None))
        last = attrs.get("tf_last", getattr(self.instance, "tf_last", None))
        if first is not None and last is not None and last < first:
            raise serializers.ValidationError({"tf_last": "must not be less than tf_first"})
        if attrs.get("sample") is None and "tf_filename" in attrs and self.instance is None:
            attrs["sample"] = m.FastMonFile.objects.filter(tf_filename=attrs["tf_filename"]).first()
        return attrs


class WorkerSerializer(ModelSerializer[m.Worker]):
    namespace = NamespaceField()

    class Meta:
        model = m.Worker
        fields = [
            "worker_id",
            "namespace",
            "run_number",
            "panda_job",
            "location",
            "status",
            "current_slice_id",
            "tf_filename",
            "slices_completed",
            "slices_failed",
            "last_heartbeat",
            "started_at",
            "ended_at",
            "metadata",
        ]


class RunStateSerializer(MergingCreate, ModelSerializer[m.RunState]):
    """``POST /api/run-states/`` of a run whose state the ingest already keeps updates it (never
    back in time).

    ``metadata.execution_id`` links the run to its execution, whichever of the
    two (run, run state) arrives first.
    """

    class Meta:
        model = m.RunState
        fields = [
            "run_number",
            "run",
            "phase",
            "state",
            "substate",
            "target_worker_count",
            "active_worker_count",
            "stf_samples_received",
            "slices_created",
            "slices_queued",
            "slices_processing",
            "slices_completed",
            "slices_failed",
            "state_changed_at",
            "updated_at",
            "metadata",
        ]
        # The counters are counted from the slices and samples (run_counters): shown, never set.
        # A v28 agent PATCHes them from its own read; that is accepted and changes nothing.
        read_only_fields = ["run", "updated_at", *sorted(m.RunState.COUNTED_FIELDS)]
        extra_kwargs: ClassVar[dict[str, Any]] = {
            "run_number": {"validators": []}
        }  # the key, but a repeat merges (see create)

    def validate(self, attrs: dict[str, Any]) -> dict[str, Any]:
        if (
            self.instance is not None
            and "run_number" in attrs
            and attrs["run_number"] != self.instance.run_number
        ):
            raise serializers.ValidationError({"run_number": "cannot be changed"})
        number = attrs.get("run_number")
        if number is not None and self.instance is None:
            attrs["run"] = m.Run.objects.filter(run_number=number).first()
        return attrs

    def create(self, validated_data: dict[str, Any]) -> m.RunState:
        number = validated_data["run_number"]

        def merge(state: m.RunState) -> m.RunState:
            changed_at = validated_data.get("state_changed_at")
            older = changed_at is not None and state.state and changed_at < state.state_changed_at
            for field, value in validated_data.items():
                if field == "metadata":
                    state.metadata = {**(state.metadata or {}), **(value or {})}
                elif field in ("phase", "state", "substate", "state_changed_at") and older:
                    continue  # the ingest has a newer state from the run's messages
                elif field == "run":
                    state.run = state.run or value
                elif field != "run_number":
                    setattr(state, field, value)
            state.save()
            return state

        state = self.create_or_merge(
            lambda: m.RunState.objects.select_for_update().filter(run_number=number).first(),
            lambda: m.RunState.objects.create(**validated_data),
            merge,
        )
        state.link_run()
        return state

    def update(self, instance: m.RunState, validated_data: dict[str, Any]) -> m.RunState:
        state = super().update(instance, validated_data)
        state.link_run()
        return state


class SystemStateEventSerializer(ModelSerializer[m.SystemStateEvent]):
    namespace = NamespaceField()

    class Meta:
        model = m.SystemStateEvent
        fields = [
            "event_id",
            "timestamp",
            "run_number",
            "namespace",
            "execution_id",
            "event_type",
            "state",
            "substate",
            "event_data",
            "msg_id",
        ]
        read_only_fields = ["event_id", "msg_id"]
        # v28 agents send "substate": null; stored as "" (no substate), like a missing one
        extra_kwargs: ClassVar[dict[str, Any]] = {"substate": {"allow_null": True}}

    def validate_substate(self, value: str | None) -> str:
        return value or ""

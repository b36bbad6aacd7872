"""What the orchestrator asks the monitor's REST API: agents, the latest execution, a run's record.

The one place the orchestrator talks HTTP to the monitor. Reads need no
token while ``SWF_API_OPEN_READS`` is on (the default); with a token
(``SWF_API_TOKEN``) it is sent. Every call has a short timeout and never
raises for a monitor that is down or answers badly: it returns ``None`` (or
says why in :attr:`MonitorApi.problem`), because the orchestrator works
without a monitor.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import httpx

from swf_testbed.liveness import Liveness


@dataclass(frozen=True)
class MonitorAgent:
    """One agent process as the monitor knows it from its heartbeats."""

    instance_name: str
    hostname: str
    pid: int
    operational_state: str
    liveness: Liveness
    last_heartbeat: float | None  # epoch seconds (the sender's clock)
    heartbeat_interval: float | None

    @classmethod
    def from_json(cls, item: dict[str, Any]) -> MonitorAgent:
        last = item.get("last_heartbeat")
        try:
            value = Liveness(str(item.get("liveness") or "unknown"))
        except ValueError:
            value = Liveness.UNKNOWN
        interval = item.get("heartbeat_interval")
        return cls(
            instance_name=str(item.get("instance_name") or ""),
            hostname=str(item.get("hostname") or ""),
            pid=int(item.get("pid") or 0),
            operational_state=str(item.get("operational_state") or ""),
            liveness=value,
            last_heartbeat=datetime.fromisoformat(last).timestamp() if last else None,
            heartbeat_interval=float(interval) if interval is not None else None,
        )


@dataclass(frozen=True)
class ExecutionFigures:
    """How far the agents got with a run: what `run` judges "drained" by."""

    stf_processed: int
    slices: int
    slices_done: int
    slices_failed: int
    samples_unsliced: int = 0


@dataclass(frozen=True)
class ExecutionInfo:
    execution_id: str
    status: str
    workflow_name: str
    source: str  # "monitor" or "broker"


class MonitorApi:
    """The monitor's REST API at ``url`` (its base URL, without ``/api``)."""

    def __init__(self, url: str, *, token: str = "", timeout: float = 2.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.headers = {"Authorization": f"Token {token}"} if token else {}
        self.problem = ""
        """Why the last call returned nothing ("" when it answered)."""

    def _get(self, client: httpx.Client, path: str, **params: Any) -> Any:
        response = client.get(path, params=params)
        response.raise_for_status()
        return response.json()

    def _client(self, timeout: float | None = None) -> httpx.Client:
        return httpx.Client(
            base_url=f"{self.url}/api",
            timeout=timeout or self.timeout,
            headers=self.headers,
            follow_redirects=False,
        )

    def _failed(self, exc: Exception) -> None:
        if isinstance(exc, httpx.HTTPStatusError):
            self.problem = f"monitor answered HTTP {exc.response.status_code} at {exc.request.url}"
        elif isinstance(exc, httpx.HTTPError):
            self.problem = f"monitor not reachable at {self.url} ({type(exc).__name__})"
        else:
            self.problem = f"monitor answered with unexpected JSON at {self.url} ({exc})"

    @staticmethod
    def _items(data: Any) -> list[dict[str, Any]]:
        items = data.get("results", []) if isinstance(data, dict) else data
        if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
            raise ValueError("expected a list of objects")
        return items

    def agents(self, namespace: str, limit: int = 1000) -> list[MonitorAgent] | None:
        """Every agent of the namespace the monitor has heard of; None when it cannot tell."""
        try:
            with self._client() as api:
                data = self._get(api, "/systemagents/", namespace=namespace, limit=limit)
            agents = [MonitorAgent.from_json(i) for i in self._items(data)]
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            self._failed(exc)
            return None
        self.problem = ""
        return agents

    def latest_execution(self, namespace: str) -> ExecutionInfo | None:
        """The namespace's newest workflow execution; None when there is none or no answer."""
        try:
            with self._client() as api:
                data = self._get(
                    api,
                    "/workflow-executions/",
                    namespace=namespace,
                    limit=1,
                    ordering="-start_time",
                )
            items = self._items(data)
        except (httpx.HTTPError, ValueError, TypeError) as exc:
            self._failed(exc)
            return None
        self.problem = ""
        if not items:
            return None
        item = items[0]
        return ExecutionInfo(
            execution_id=str(item.get("execution_id") or item.get("id")),
            status=str(item.get("status") or ""),
            workflow_name=str(item.get("workflow_name") or ""),
            source="monitor",
        )

    def execution_figures(self, execution_id: str) -> ExecutionFigures | None:
        """STFs processed, slices and unsliced samples of the execution, as the monitor has them.

        After the broker connection was lost mid-run the orchestrator's own
        counts are not to be trusted (it missed what was sent meanwhile, and
        redeliveries count twice); the monitor's ingest subscribes durably and
        records each message once.
        """
        try:
            with self._client(5.0) as api:

                def count(path: str, **params: Any) -> int:
                    return int(self._get(api, path, **params, limit=1)["count"])

                runs = self._items(self._get(api, "/runs/", execution_id=execution_id))
                slices = done = failed = 0
                for run in runs:
                    number = run["run_number"]
                    slices += count("/tf-slices/", run_number=number)
                    done += count("/tf-slices/", run_number=number, status="completed")
                    failed += count("/tf-slices/", run_number=number, status="failed")
                return ExecutionFigures(
                    stf_processed=count(
                        "/stf-files/", execution_id=execution_id, status="processed"
                    ),
                    slices=slices,
                    slices_done=done,
                    slices_failed=failed,
                    samples_unsliced=count(
                        "/fastmon-files/", execution_id=execution_id, has_slices="false"
                    ),
                )
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self._failed(exc)
            return None

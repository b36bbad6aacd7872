"""Run every benchmark and print one table of figures against their baselines.

Each benchmark under ``bench/`` runs as its own subprocess (``--quick`` unless
``--full``); its very last line of output is its JSON figures. The table
shows, per benchmark, the figure measured, the baseline it is compared with
and their ratio. A benchmark that fails (non-zero exit, or no JSON last line)
gets a row saying so, with its exit code and the last lines of its stderr,
and this program then exits non-zero. The last line of this program's own
output is one JSON object with every benchmark's figures.

    .venv/bin/python bench/run_all.py                 # all of them, --quick
    .venv/bin/python bench/run_all.py --full          # the full runs
    .venv/bin/python bench/run_all.py --only ingest --only pipeline
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

BENCHMARKS = (
    "broker_throughput",
    "ingest",
    "monitor_scale",
    "pipeline",
    "pipeline_production",
    "run_growth",
    "legacy",
    "stream",
)
TITLES = {
    "broker_throughput": "broker throughput",
    "ingest": "monitor ingest",
    "monitor_scale": "monitor scale",
    "pipeline": "pipeline",
    "pipeline_production": "pipeline on ActiveMQ + PostgreSQL",
    "run_growth": "run growth",
    "legacy": "legacy agents",
    "stream": "message stream",
}
MONITOR_AIM_MS = 150.0
"""``monitor_scale.py``'s aim for the worst p95 (it prints it, but does not put it in its JSON)."""

STDERR_LINES = 5

POSTGRES_URL = os.environ.get("SWF_TEST_POSTGRES_URL", "postgres://postgres@127.0.0.1:5432/test")
"""The PostgreSQL server of the production pair's run (a fresh database is made on it)."""
SCRIPTS = {"pipeline_production": "pipeline"}
"""A benchmark that is another one's script with other arguments (``ARGS``)."""
ARGS = {
    "pipeline_production": [
        "--broker",
        "activemq",
        "--database-url",
        POSTGRES_URL,
        "--rates",
        "1.0",
        "--stfs",
        "200",
    ],
}
PRODUCTION_AIM_STF_PER_S = 50.0
"""Issue 11's aim for the production pair at sampling 1.0."""


@dataclass
class Outcome:
    name: str
    exit_code: int | None
    seconds: float
    figures: dict[str, Any] | None = None
    problem: str = ""
    stderr_tail: list[str] = field(default_factory=list)
    log_dir: Path | None = None

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and self.figures is not None and not self.problem


# --------------------------------------------------------------------------- running


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """Stop a benchmark and whatever it started (its brokers, agents): its whole process group."""
    for sig, wait in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(wait)
            return
        except subprocess.TimeoutExpired:
            continue


def last_json(stdout: str) -> dict[str, Any] | None:
    """The JSON object on the last non-empty line, or None."""
    lines = [line for line in stdout.splitlines() if line.strip()]
    if not lines:
        return None
    try:
        value = json.loads(lines[-1])
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, dict) else None


def run_one(name: str, full: bool, timeout: float, logs: Path, console: Console) -> Outcome:
    script = SCRIPTS.get(name, name)
    argv = [
        sys.executable,
        str(BENCH / f"{script}.py"),
        *([] if full else ["--quick"]),
        *ARGS.get(name, []),
    ]
    out_path, err_path = logs / f"{name}.out", logs / f"{name}.err"
    shown = " ".join(Path(a).name if a.endswith(".py") else a for a in argv[1:])
    console.print(f"[bold]{name}[/bold]: {shown} …")
    started = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        # its own session: on a timeout or Ctrl+C the bench and everything it started are
        # stopped together
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
        try:
            exit_code: int | None = proc.wait(timeout)
            problem = ""
        except subprocess.TimeoutExpired:
            _stop_group(proc)
            exit_code, problem = proc.returncode, f"timed out after {timeout:g} s"
        except BaseException:
            _stop_group(proc)
            raise
    seconds = time.monotonic() - started
    stdout = out_path.read_text(errors="replace")
    stderr_lines = [
        line for line in err_path.read_text(errors="replace").splitlines() if line.strip()
    ]
    figures = last_json(stdout)
    if figures is None and not problem:
        problem = "no JSON object on its last line of output"
    outcome = Outcome(
        name, exit_code, seconds, figures, problem, stderr_lines[-STDERR_LINES:], logs
    )
    status = (
        "[green]ok[/green]" if outcome.ok else f"[red]FAILED[/red] (exit {exit_code}) {problem}"
    )
    console.print(f"  {status} in {seconds:.0f} s")
    return outcome


# --------------------------------------------------------------------------- rows


Row = tuple[str, str, str, float | None]
"""benchmark label, figure, baseline, ratio"""


def _num(value: Any, unit: str = "") -> str:
    if value is None:
        return "–"
    if isinstance(value, (int, float)) and abs(value) >= 100:
        return f"{value:,.0f}{unit}"
    if isinstance(value, float):
        return f"{value:.1f}{unit}"
    return f"{value}{unit}"


def _ratio(a: Any, b: Any) -> float | None:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b:
        return a / b
    return None


def rows_broker_throughput(f: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for key, entry in f.items():
        if not (isinstance(entry, dict) and "embedded" in entry):
            continue  # messages, repeat, body_bytes, ok
        pattern = key.replace("_", " ", 1).replace("_", "→")  # topic_1_3 -> "topic 1→3"
        ratio = entry.get("ratio")
        baseline = (
            f"ActiveMQ msg/s: {_num(entry['activemq'])}"
            if "activemq" in entry
            else "ActiveMQ: not run"
        )
        rows.append(
            (
                f"broker throughput, {pattern}",
                f"embedded msg/s: {_num(entry['embedded'])}",
                baseline,
                ratio
                if ratio is not None
                else _ratio(entry.get("embedded"), entry.get("activemq")),
            )
        )
        if "rabbitmq" in entry:
            rows.append(
                (
                    f"broker throughput, {pattern}, against RabbitMQ",
                    f"embedded msg/s: {_num(entry['embedded'])}",
                    f"RabbitMQ msg/s: {_num(entry['rabbitmq'])}",
                    _ratio(entry.get("embedded"), entry.get("rabbitmq")),
                )
            )
    return rows


def rows_ingest(f: dict[str, Any]) -> list[Row]:
    return [
        (
            f"monitor ingest ({f.get('database', '?')})",
            f"ingest msg/s: {_num(f.get('ingest_msgs_per_s'))}",
            f"bare consumer msg/s: {_num(f.get('baseline_msgs_per_s'))}",
            f.get("ratio", _ratio(f.get("ingest_msgs_per_s"), f.get("baseline_msgs_per_s"))),
        )
    ]


def rows_monitor_scale(f: dict[str, Any]) -> list[Row]:
    worst = f.get("worst_p95_ms")
    return [
        (
            f"monitor scale ({_num(f.get('messages'))} msgs, {f.get('database', '?')})",
            f"worst p95 ms: {_num(worst)}",
            f"aim ms: < {_num(MONITOR_AIM_MS)}",
            _ratio(worst, MONITOR_AIM_MS),
        )
    ]


def rows_pipeline(f: dict[str, Any]) -> list[Row]:
    label = f"pipeline ({f.get('stfs', '?')} STFs, sampling {f.get('sampling_rate', '?')})"
    rows: list[Row] = [
        (
            label,
            f"STF/s: {_num(f.get('stf_per_s'))}",
            f"aim STF/s: {_num(f.get('target_stf_per_s'))}",
            _ratio(f.get("stf_per_s"), f.get("target_stf_per_s")),
        ),
        (
            label,
            f"msgs/s: {_num(f.get('msgs_per_s'))}",
            f"raw broker msgs/s: {_num(f.get('broker_msgs_per_s'))}",
            f.get("ratio", _ratio(f.get("msgs_per_s"), f.get("broker_msgs_per_s"))),
        ),
        (
            f"{label}, chain alone",
            f"msgs/s: {_num(f.get('chain_msgs_per_s'))}",
            f"raw broker msgs/s: {_num(f.get('broker_msgs_per_s'))}",
            f.get("chain_ratio", _ratio(f.get("chain_msgs_per_s"), f.get("broker_msgs_per_s"))),
        ),
    ]
    for rate, run in (
        f.get("runs") or {}
    ).items():  # the other sampling rates (the headline is 0.05)
        if not isinstance(run, dict) or run.get("rate") == f.get("sampling_rate"):
            continue
        other = f"pipeline ({run.get('stfs', '?')} STFs, sampling {rate})"
        rows.append(
            (
                other,
                f"STF/s: {_num(run.get('stf_per_s'))}, msgs/s: {_num(run.get('msgs_per_s'))}",
                f"raw broker msgs/s: {_num(run.get('broker_msgs_per_s'))}",
                _ratio(run.get("msgs_per_s"), run.get("broker_msgs_per_s")),
            )
        )
        rows.append(
            (
                f"{other}, chain alone",
                f"STF/s: {_num(run.get('chain_stf_per_s'))}",
                f"end to end STF/s: {_num(run.get('stf_per_s'))}",
                _ratio(run.get("chain_stf_per_s"), run.get("stf_per_s")),
            )
        )
    for rate, run in (
        f.get("runs") or {}
    ).items():  # where the CPU goes: the ingest against all processes
        cpu = run.get("cpu_us_per_msg") if isinstance(run, dict) else None
        if cpu:
            rows.append(
                _cpu_row(f"pipeline ({run.get('stfs', '?')} STFs, sampling {rate})", cpu, "ingest")
            )
    return rows


def _cpu_row(label: str, cpu: dict[str, Any], process: str) -> Row:
    """One process's CPU per message of the run against all processes'."""
    return (
        f"{label}, CPU per message",
        f"{process} µs: {_num(cpu.get(process))}",
        f"all processes µs: {_num(cpu.get('total'))}",
        _ratio(cpu.get(process), cpu.get("total")),
    )


def rows_pipeline_production(f: dict[str, Any]) -> list[Row]:
    label = (
        f"pipeline on {f.get('broker', '?')} + {f.get('database', '?')} "
        f"({f.get('stfs', '?')} STFs, sampling {f.get('sampling_rate', '?')})"
    )
    cpu = f.get("cpu_us_per_msg") or next(
        (r.get("cpu_us_per_msg") for r in (f.get("runs") or {}).values() if isinstance(r, dict)),
        None,
    )
    rows: list[Row] = [
        (
            label,
            f"STF/s: {_num(f.get('stf_per_s'))}",
            f"aim STF/s: {_num(PRODUCTION_AIM_STF_PER_S)}",
            _ratio(f.get("stf_per_s"), PRODUCTION_AIM_STF_PER_S),
        ),
        (
            f"{label}, chain alone",
            f"STF/s: {_num(f.get('chain_stf_per_s'))}",
            f"end to end STF/s: {_num(f.get('stf_per_s'))}",
            _ratio(f.get("chain_stf_per_s"), f.get("stf_per_s")),
        ),
    ]
    if cpu:
        rows.append(_cpu_row(label, cpu, "broker"))
    return rows


def rows_legacy(f: dict[str, Any]) -> list[Row]:
    label = (
        f"legacy agents ({f.get('stfs', '?')} STFs, "
        f"sampling {f.get('sampling_rate', '?')}, serial REST)"
    )
    return [
        (
            label,
            f"STF/s: {_num(f.get('stf_per_s'))}",
            f"aim STF/s: {_num(f.get('aim_stf_per_s'))}",
            _ratio(f.get("stf_per_s"), f.get("aim_stf_per_s")),
        ),
        (
            label,
            f"REST p50 ms: {_num(f.get('rest_p50_ms'))}",
            f"trivial GET p50 ms: {_num(f.get('baseline_get_p50_ms'))}",
            f.get("ratio", _ratio(f.get("rest_p50_ms"), f.get("baseline_get_p50_ms"))),
        ),
    ]


def rows_run_growth(f: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for way, label in (("differences", "counters by differences"), ("recount", "recount/batch")):
        figures = f.get("ways", {}).get(way, {})
        per_stf = figures.get("cpu_us_per_stf", {})
        if not per_stf:
            continue
        first, last = next(iter(per_stf)), f.get("last_window") or list(per_stf)[-1]
        rows.append(
            (
                f"ingest CPU per STF at STFs {last} of a run, {label} ({f.get('database', '?')})",
                f"µs/STF: {_num(per_stf.get(last))}",
                f"STFs {first} µs/STF: {_num(per_stf.get(first))}",
                _ratio(per_stf.get(last), per_stf.get(first)),
            )
        )
    return rows


def rows_stream(f: dict[str, Any]) -> list[Row]:
    return [
        (
            f"page p95 with {f.get('connected', '?')} idle streams",
            f"p95 ms: {_num(f.get('with_streams_p95_ms'))}",
            f"no streams p95 ms: {_num(f.get('baseline_p95_ms'))}",
            f.get("ratio", _ratio(f.get("with_streams_p95_ms"), f.get("baseline_p95_ms"))),
        )
    ]


ROWS: dict[str, Callable[[dict[str, Any]], list[Row]]] = {
    "broker_throughput": rows_broker_throughput,
    "ingest": rows_ingest,
    "monitor_scale": rows_monitor_scale,
    "pipeline": rows_pipeline,
    "pipeline_production": rows_pipeline_production,
    "run_growth": rows_run_growth,
    "legacy": rows_legacy,
    "stream": rows_stream,
}


def table_of(outcomes: list[Outcome], mode: str) -> Table:
    table = Table(
        title=f"swf-testbed benchmarks ({mode})",
        caption="ratio = figure / baseline; monitor scale: below 1 meets the aim (lower is better)",
    )
    table.add_column("benchmark")
    table.add_column("figure")
    table.add_column("baseline")
    table.add_column("ratio", justify="right")
    for outcome in outcomes:
        if outcome.figures is not None:
            try:
                rows = ROWS[outcome.name](outcome.figures)
            except Exception as exc:  # noqa: BLE001 - a changed JSON layout must not hide the other rows
                rows = [(TITLES[outcome.name], f"[unreadable figures: {exc!r}]", "–", None)]
            for label, figure, baseline, ratio in rows:
                table.add_row(label, figure, baseline, "–" if ratio is None else f"{ratio:.3f}")
        if not outcome.ok:
            why = outcome.problem or "exited non-zero"
            detail = "stderr: " + ("\n".join(outcome.stderr_tail) or "(empty)")
            table.add_row(
                Text(TITLES[outcome.name], style="red"),
                Text(f"FAILED: exit code {outcome.exit_code}, {why}", style="red"),
                Text(detail + f"\n(logs: {outcome.log_dir})"),
                "–",
            )
    return table


# --------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="the small runs (the default)")
    mode.add_argument("--full", action="store_true", help="the full runs (takes much longer)")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        metavar="NAME",
        default=None,
        help=f"run only this benchmark (repeatable): {', '.join(BENCHMARKS)}",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds one benchmark may take before it is stopped and counted failed "
        "(default 900 quick, 7200 full)",
    )
    args = parser.parse_args(argv)
    names = [n for n in BENCHMARKS if n in args.only] if args.only else list(BENCHMARKS)
    mode_name = "full" if args.full else "quick"
    timeout = args.timeout or (7200.0 if args.full else 900.0)

    progress = Console(stderr=True, soft_wrap=True)
    out = Console(width=None if sys.stdout.isatty() else 140)
    logs = Path(tempfile.mkdtemp(prefix="swf-bench-all-"))
    progress.print(f"running {', '.join(names)} ({mode_name}); each benchmark's output in {logs}")
    outcomes = [run_one(name, args.full, timeout, logs, progress) for name in names]

    out.print(table_of(outcomes, mode_name))
    ok = all(o.ok for o in outcomes)
    summary = {
        "mode": mode_name,
        "ok": ok,
        "benchmarks": {
            o.name: {
                "ok": o.ok,
                "exit_code": o.exit_code,
                "seconds": round(o.seconds, 1),
                **(
                    {"error": o.problem or "exited non-zero", "stderr_tail": o.stderr_tail}
                    if not o.ok
                    else {}
                ),
                "figures": o.figures,
            }
            for o in outcomes
        },
    }
    sys.stdout.flush()
    print(json.dumps(summary), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

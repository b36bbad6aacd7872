"""Starting the monitor's web (``swf-testbed monitor serve``, uvicorn) as a real process, for tests
and benchmarks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

from swf_testbed.testing.brokers import free_port, wait_for_port

CLI = [sys.executable, "-c", "from swf_testbed.cli import main; main()"]


class MonitorWebProcess:
    """The monitor's web on a free port, on the database at ``database_url`` (already migrated)."""

    def __init__(
        self, database_url: str, *, env: dict[str, str] | None = None, migrate: bool = False
    ) -> None:
        self.database_url = database_url
        self.port = free_port()
        self.home = Path(tempfile.mkdtemp(prefix="swf-web-"))
        self.extra_env = env or {}
        self.migrate = migrate
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.home / "web.log"

    def start(self, timeout: float = 90.0) -> MonitorWebProcess:
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        env.update(
            {"DATABASE_URL": self.database_url, "SWF_HOME": str(self.home), **self.extra_env}
        )
        args = [*CLI, "monitor", "serve", "--port", str(self.port), "--log-level", "warning"]
        if not self.migrate:
            args.append("--no-migrate")
        with open(self.log_path, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            wait_for_port("127.0.0.1", self.port, timeout, self.proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(
                f"the monitor web did not start: {exc}\n{self.log()[-3000:]}"
            ) from None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)

"""Secrets from files (``<NAME>_FILE``) and clear errors for bad settings in the environment."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from swf_testbed.orchestrator.config import load, resolve_services
from swf_testbed.orchestrator.supervisor import build_programs, runtime_paths
from swf_testbed.settings import (
    SECRET_VARIABLES,
    SecretFileError,
    Settings,
    SettingsError,
    get_settings,
)

SECRET = "pw-" + "FromAFile0123456789"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.startswith(("SWF_", "ACTIVEMQ_", "DATABASE_URL")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("SWF_HOME", str(tmp_path / "home"))
    get_settings.cache_clear()
    yield monkeypatch
    get_settings.cache_clear()


def secret_file(tmp_path: Path, text: str, mode: int = 0o600) -> Path:
    path = tmp_path / "secret"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    "variable,read",
    [
        ("ACTIVEMQ_PASSWORD", lambda s: s.broker.password),
        ("SWF_SECRET_KEY", lambda s: s.monitor.secret_key),
        ("SWF_API_TOKEN", lambda s: s.monitor.api_token),
        ("DATABASE_URL", lambda s: s.database_url),
    ],
)
def test_each_secret_can_come_from_an_owner_only_file(
    env: pytest.MonkeyPatch, tmp_path: Path, variable: str, read: Callable[[Settings], object]
) -> None:
    assert variable in SECRET_VARIABLES
    env.setenv(f"{variable}_FILE", str(secret_file(tmp_path, SECRET)))
    assert read(get_settings()) == SECRET


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_file_open_to_others_is_refused(
    env: pytest.MonkeyPatch, tmp_path: Path, mode: int
) -> None:
    path = secret_file(tmp_path, SECRET, mode)
    env.setenv("ACTIVEMQ_PASSWORD_FILE", str(path))
    with pytest.raises(SecretFileError) as caught:
        get_settings()
    text = str(caught.value)
    assert (
        f"ACTIVEMQ_PASSWORD_FILE={path}" in text
        and f"mode {mode:03o}" in text
        and "chmod 600" in text
    )
    assert SECRET not in text


def test_missing_file_and_both_forms_are_errors(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env.setenv("SWF_SECRET_KEY_FILE", str(tmp_path / "absent"))
    with pytest.raises(
        SecretFileError, match=r"SWF_SECRET_KEY_FILE=.*absent: cannot read it: No such file"
    ):
        get_settings()
    env.setenv("SWF_SECRET_KEY_FILE", str(secret_file(tmp_path, SECRET)))
    env.setenv("SWF_SECRET_KEY", "k" * 40)
    get_settings.cache_clear()
    with pytest.raises(
        SecretFileError, match="both SWF_SECRET_KEY and SWF_SECRET_KEY_FILE are set"
    ):
        get_settings()


def test_bad_values_name_the_variable_and_never_echo_a_secret(env: pytest.MonkeyPatch) -> None:
    env.setenv("ACTIVEMQ_PORT", "http")
    with pytest.raises(SettingsError, match=r"ACTIVEMQ_PORT: .*integer.*\(got 'http'\)"):
        get_settings()
    env.delenv("ACTIVEMQ_PORT")
    env.setenv("SWF_INGEST_BATCH_SIZE", "0")
    get_settings.cache_clear()
    with pytest.raises(SettingsError, match=r"SWF_INGEST_BATCH_SIZE: .*greater than or equal to 1"):
        get_settings()


@pytest.mark.slow
def test_the_command_line_says_what_is_wrong_in_one_message(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = secret_file(tmp_path, SECRET, 0o644)
    result = subprocess.run(
        [sys.executable, "-m", "swf_testbed.cli", "status", "-n", "nobody"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "ACTIVEMQ_PASSWORD_FILE": str(path)},
    )
    assert result.returncode == 2, result
    assert "error: ACTIVEMQ_PASSWORD_FILE=" in result.stderr and "chmod 600" in result.stderr
    assert "Traceback" not in result.stderr and SECRET not in result.stderr + result.stdout


def test_supervised_programs_get_the_file_not_the_secret(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """A secret given as a file reaches agents as that file: its value is never written to
    supervisord.conf.
    """
    env.setenv("ACTIVEMQ_USER", "swf")
    env.setenv("ACTIVEMQ_PASSWORD_FILE", str(secret_file(tmp_path, SECRET)))
    (tmp_path / "testbed.toml").write_text(
        '[testbed]\nnamespace = "t1"\n\n[agents.data]\nmodule = '
        '"swf_testbed.agents.data:DataAgent"\n\n[broker]\nmode = "external"\n\n[monitor]\nmode = '
        '"external"\n'
    )
    settings = Settings()
    assert settings.broker.password == SECRET
    loaded = load(tmp_path / "testbed.toml")
    paths = runtime_paths(settings.home, "t1")
    programs, _ = build_programs(
        loaded, resolve_services(loaded.config, settings), settings.home, paths, python="python3"
    )
    data = next(p for p in programs if p.name == "data")
    assert data.env["ACTIVEMQ_PASSWORD_FILE"] == os.environ["ACTIVEMQ_PASSWORD_FILE"]
    assert "ACTIVEMQ_PASSWORD" not in data.env and data.env["ACTIVEMQ_USER"] == "swf"
    assert all(SECRET not in value for p in programs for value in p.env.values())

"""The soak benchmark's testbed is `swf-testbed init`'s, paced to ePIC's real time."""

from __future__ import annotations

import importlib.util
import sys
import tomllib
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_soak_testbed_is_the_starter_at_real_time() -> None:
    spec = importlib.util.spec_from_file_location("soak", BENCH / "soak.py")
    assert spec is not None and spec.loader is not None
    soak = importlib.util.module_from_spec(spec)
    sys.modules["soak"] = soak  # its dataclasses look their module up while it loads
    try:
        spec.loader.exec_module(soak)
    finally:
        del sys.modules["soak"]
    bed = tomllib.loads(soak.testbed_toml("soakns", 12345, 23456, stfs=3000, minutes=30))
    assert bed["testbed"]["namespace"] == "soakns"
    assert bed["workflow"]["time_scale"] == 1
    assert (bed["broker"]["port"], bed["monitor"]["port"]) == (12345, 23456)
    assert bed["parameters"]["stf_count"] == 3000
    assert bed["parameters"]["stf_sampling_rate"] == soak.SAMPLING
    assert bed["parameters"]["stf_interval"] == soak.STF_INTERVAL_S
    assert bed["agents"]["worker"]["instances"] == 2

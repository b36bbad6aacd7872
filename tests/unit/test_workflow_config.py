"""Workflow configs: shipped TOML, includes, overrides, errors."""

from __future__ import annotations

import json
import tomllib
from importlib import resources
from pathlib import Path

import pytest

from swf_testbed.daq import DaqConfig
from swf_testbed.workflows import (
    ConfigError,
    ConfigTypeError,
    FastProcessingConfig,
    IncludeCycle,
    UnknownConfig,
    UnknownParameter,
    available_configs,
    load_config,
    parse_overrides,
)


def write(root: Path, name: str, text: str) -> None:
    (root / f"{name}.toml").write_text(text, encoding="utf-8")


def test_shipped_configs_are_listed_and_load() -> None:
    names = available_configs()
    assert {"daq_state_machine", "fast_processing_default", "stf_datataking_default"} <= set(names)
    for name in names:
        merged = load_config(name)
        json.dumps(merged.to_dict())
        assert isinstance(merged.daq, DaqConfig)


def test_base_toml_matches_the_daq_defaults() -> None:
    """The base file spells out every DAQ parameter, with the model's defaults."""
    text = (
        resources.files("swf_testbed.workflows")
        .joinpath("configs/daq_state_machine.toml")
        .read_text()
    )
    daq = tomllib.loads(text)["daq"]
    assert set(daq) == set(DaqConfig.model_fields)
    assert DaqConfig.model_validate(daq) == DaqConfig()
    assert load_config("daq_state_machine").daq == DaqConfig()


def test_fast_processing_default() -> None:
    merged = load_config("fast_processing_default")
    assert merged.sources == ("daq_state_machine", "fast_processing_default")
    daq = merged.daq
    assert daq.stf_count == 10 and daq.physics_period_count == 1
    assert daq.stf_interval == 2.0 and daq.beam_ready_delay == 2.0  # from the include
    fp = merged.fast_processing
    assert fp == FastProcessingConfig(
        target_worker_count=30,
        stf_sampling_rate=0.05,
        slices_per_sample=15,
        slice_processing_time=30,
        worker_rampup_time=300,
        worker_rampdown_time=60,
        tf_sample_fraction=0.15,
        processing_time=1.0,
        max_slice_retries=3,
    )
    assert merged.get("target_worker_count") == 30
    assert merged.get("daq.stf_count") == 10
    assert merged.get("nothing", "dflt") == "dflt"


def test_stf_datataking_default_has_no_fast_processing() -> None:
    merged = load_config("stf_datataking_default")
    assert merged.sources == ("daq_state_machine", "stf_datataking_default")
    assert merged.fast_processing is None
    assert merged.daq == DaqConfig()
    with pytest.raises(UnknownParameter, match="target_worker_count"):
        load_config("stf_datataking_default", {"target_worker_count": 3})


def test_overrides_win_and_are_recorded() -> None:
    merged = load_config(
        "fast_processing_default",
        {
            "stf_count": 5,
            "daq.stf_interval": 1,
            "target_worker_count": 4,
            "filename_style": "dated",
        },
    )
    assert merged.daq.stf_count == 5
    assert merged.daq.stf_interval == 1.0
    assert isinstance(
        merged.to_dict()["daq"]["stf_interval"], float
    )  # int accepted for a float, stored as one
    assert merged.fast_processing is not None and merged.fast_processing.target_worker_count == 4
    assert merged.overrides == {
        "daq.stf_count": 5,
        "daq.stf_interval": 1.0,
        "fast_processing.target_worker_count": 4,
        "daq.filename_style": "dated",
    }
    d = merged.to_dict()
    assert d["name"] == "fast_processing_default"
    assert d["overrides"]["daq.stf_count"] == 5
    assert json.loads(json.dumps(d)) == d
    assert json.loads(merged.to_json()) == d
    # the recorded dict is a copy
    d["daq"]["stf_count"] = 99
    assert merged.daq.stf_count == 5 and merged.to_dict()["daq"]["stf_count"] == 5


def test_unknown_override_names_the_key_and_suggests() -> None:
    with pytest.raises(UnknownParameter) as info:
        load_config("fast_processing_default", {"stf_cuont": 5})
    msg = str(info.value)
    assert "'stf_cuont'" in msg and "did you mean 'stf_count'" in msg
    assert info.value.key == "stf_cuont"
    with pytest.raises(UnknownParameter, match="'daq.stf_cuont'.*did you mean 'stf_count'"):
        load_config("fast_processing_default", {"daq.stf_cuont": 5})
    with pytest.raises(UnknownParameter, match="'completely_unrelated'"):
        load_config("fast_processing_default", {"completely_unrelated": 5})


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("stf_count", "5", "an integer"),
        ("stf_count", 5.5, "an integer"),
        ("stf_count", True, "an integer"),
        ("stf_interval", "fast", "a number"),
        ("stf_interval", None, "a number"),
        ("filename_style", 3, "a string"),
        ("max_slice_retries", [1], "an integer"),
    ],
)
def test_wrong_override_type_names_key_and_type(key: str, value: object, expected: str) -> None:
    with pytest.raises(ConfigTypeError) as info:
        load_config("fast_processing_default", {key: value})
    assert f"'{key}'" in str(info.value) and expected in str(info.value)
    assert info.value.key == key


def test_out_of_range_override_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"daq\.stf_count \(override\)"):
        load_config("fast_processing_default", {"stf_count": -1})
    with pytest.raises(ConfigError, match=r"daq\.filename_style \(override\)"):
        load_config("fast_processing_default", {"filename_style": "weird"})


def test_unknown_config_lists_available() -> None:
    with pytest.raises(UnknownConfig) as info:
        load_config("no_such_workflow")
    assert "no_such_workflow" in str(info.value)
    assert "fast_processing_default" in str(info.value) and "stf_datataking_default" in str(
        info.value
    )
    with pytest.raises(UnknownConfig):
        load_config("../etc/passwd")


def test_includes_resolve_recursively_later_wins(tmp_path: Path) -> None:
    write(
        tmp_path,
        "a",
        'description = "a"\n[daq]\nstf_count = 1\nstandby_duration = 9.0\n[extra]\nlevel = "a"\nn '
        "= 1\n",
    )
    write(tmp_path, "b", 'include = ["a"]\n[daq]\nstf_count = 2\n[extra]\nlevel = "b"\n')
    write(
        tmp_path, "c", 'include = ["daq_state_machine", "b"]\ndescription = "c"\n[extra]\nn = 3\n'
    )
    merged = load_config("c", search_paths=[tmp_path])
    # depth-first, in listed order: the base, then a (via b), then b, then c itself
    assert merged.sources == ("daq_state_machine", "a", "b", "c")
    assert merged.daq.stf_count == 2
    assert merged.daq.standby_duration == 9.0
    assert merged.section("extra") == {"level": "b", "n": 3}
    assert merged.description == "c"
    assert load_config("c", {"n": 7, "level": "x"}, search_paths=[tmp_path]).section("extra") == {
        "level": "x",
        "n": 7,
    }
    with pytest.raises(ConfigTypeError, match="'n'"):
        load_config("c", {"n": "seven"}, search_paths=[tmp_path])
    assert "c" in available_configs([tmp_path])


def test_user_configs_shadow_shipped_ones(tmp_path: Path) -> None:
    write(
        tmp_path,
        "stf_datataking_default",
        'include = ["daq_state_machine"]\n[daq]\nstf_count = 4\n',
    )
    assert load_config("stf_datataking_default", search_paths=[tmp_path]).daq.stf_count == 4
    assert load_config("stf_datataking_default").daq.stf_count == 0


def test_include_cycle_is_an_error(tmp_path: Path) -> None:
    write(tmp_path, "x", 'include = ["y"]\n')
    write(tmp_path, "y", 'include = ["z"]\n')
    write(tmp_path, "z", 'include = ["x"]\n')
    with pytest.raises(IncludeCycle, match="x -> y -> z -> x"):
        load_config("x", search_paths=[tmp_path])
    write(tmp_path, "self", 'include = ["self"]\n')
    with pytest.raises(IncludeCycle, match="self -> self"):
        load_config("self", search_paths=[tmp_path])


def test_unknown_include_names_the_includer(tmp_path: Path) -> None:
    write(tmp_path, "bad", 'include = ["missing_one"]\n')
    with pytest.raises(UnknownConfig, match=r"'missing_one' \(included from 'bad'\)"):
        load_config("bad", search_paths=[tmp_path])


def test_file_errors_name_file_and_key(tmp_path: Path) -> None:
    write(tmp_path, "typo", 'include = ["daq_state_machine"]\n[daq]\nstf_intervall = 1.0\n')
    with pytest.raises(
        ConfigError, match=r"daq\.stf_intervall \(in typo\.toml\): unknown parameter"
    ):
        load_config("typo", search_paths=[tmp_path])
    write(tmp_path, "wrongtype", '[daq]\nstf_interval = "2"\n')
    with pytest.raises(
        ConfigTypeError, match=r"'daq\.stf_interval' \(in wrongtype\.toml\) must be a number"
    ):
        load_config("wrongtype", search_paths=[tmp_path])
    write(tmp_path, "toplevel", "stf_count = 3\n")
    with pytest.raises(ConfigError, match="must be inside a \\[section\\]"):
        load_config("toplevel", search_paths=[tmp_path])
    write(tmp_path, "broken", "[daq\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config("broken", search_paths=[tmp_path])
    write(tmp_path, "badinclude", 'include = "daq_state_machine"\n')
    with pytest.raises(ConfigError, match="include must be a list"):
        load_config("badinclude", search_paths=[tmp_path])


def test_ambiguous_flat_key_must_be_qualified(tmp_path: Path) -> None:
    write(tmp_path, "amb", "[one]\nrate = 1.0\n[two]\nrate = 2.0\n")
    with pytest.raises(ConfigError, match="'one.rate' or 'two.rate'"):
        load_config("amb", {"rate": 3.0}, search_paths=[tmp_path])
    merged = load_config("amb", {"two.rate": 3.0}, search_paths=[tmp_path])
    assert merged.section("two") == {"rate": 3.0}
    with pytest.raises(ConfigError, match="no \\[daq\\] section"):
        _ = merged.daq


def test_non_json_value_is_refused(tmp_path: Path) -> None:
    write(tmp_path, "dated", "[misc]\nwhen = 2026-01-01T00:00:00Z\n")
    with pytest.raises(ConfigError, match="JSON"):
        load_config("dated", search_paths=[tmp_path])


def test_parse_overrides() -> None:
    assert parse_overrides(
        ["stf_count=5", "stf_interval = 0.5", "filename_style=dated", 'x="a b"', "flag=true"]
    ) == {
        "stf_count": 5,
        "stf_interval": 0.5,
        "filename_style": "dated",
        "x": "a b",
        "flag": True,
    }
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["novalue"])
    merged = load_config("fast_processing_default", parse_overrides(["stf_count=3"]))
    assert merged.daq.stf_count == 3

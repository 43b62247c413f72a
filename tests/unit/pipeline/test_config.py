"""One config per tool: generated parsers, removed alias flags, plan-time validation, renamed settings."""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import typing

import pytest

from megatron_gm.config import add_dataclass_args, check_settings, flags, from_namespace
from megatron_gm.errors import GMError
from megatron_gm.influence.bootstrap import BootstrapConfig
from megatron_gm.influence.cli import bootstrap_parser, train_parser
from megatron_gm.influence.train import TrainConfig
from megatron_gm.oracle.cli import PREFIX, OracleConfig, add_oracle_args
from megatron_gm.pipeline import cli as pipeline_cli
from megatron_gm.pipeline.config import PipelineConfig
from megatron_gm.pipeline.presets import preset
from megatron_gm.quality.cli import build_parser as quality_parser
from megatron_gm.quality.fasttext_filter import FilterConfig
from megatron_gm.selection import cli as select_cli
from megatron_gm.selection.config import SelectConfig


def _oracle_parser() -> argparse.ArgumentParser:
    return add_oracle_args(argparse.ArgumentParser())


# (config class, its tool's parser, flag prefix)
TOOLS = [
    (OracleConfig, _oracle_parser, PREFIX),
    (TrainConfig, train_parser, "--"),
    (BootstrapConfig, bootstrap_parser, "--"),
    (SelectConfig, select_cli.build_parser, "--"),
    (FilterConfig, quality_parser, "--"),
]


def _required(cls: type, prefix: str) -> list[str]:
    argv = []
    for f in dataclasses.fields(cls):
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            argv += [flags(cls, f.name, prefix)[0], *(["0"] if f.name == "stage" else ["req"])]
    return argv


@pytest.mark.parametrize(("cls", "parser", "prefix"), TOOLS, ids=lambda x: getattr(x, "__name__", x))
def test_parser_defaults_and_help_round_trip(cls, parser, prefix):
    p = parser()
    actions = {a.dest: a for a in p._actions}
    cfg = from_namespace(cls, p.parse_args(_required(cls, prefix)), prefix)
    for f in dataclasses.fields(cls):
        action = actions[prefix.lstrip("-").replace("-", "_") + f.name]
        assert action.help, f"{f.name}: no help text"
        if f.default is not dataclasses.MISSING:
            assert getattr(cfg, f.name) == f.default, f.name


# every non-default value a field of each type gets, and what it must parse to
VALUES = {int: ("7", 7), float: ("0.25", 0.25), str: ("x", "x")}


@pytest.mark.parametrize(("cls", "parser", "prefix"), TOOLS, ids=lambda x: getattr(x, "__name__", x))
def test_parser_types_round_trip(cls, parser, prefix):
    hints = typing.get_type_hints(cls)
    argv, want = [], {}
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if type(None) in typing.get_args(kind):  # int | None -> int
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        flag = flags(cls, f.name, prefix)[0]
        choices = f.metadata.get("choices")
        if kind is bool:  # a switch: --x turns an off setting on; --no-x (its own or negated) turns it off
            argv.append("--no-" + flag[2:] if f.default and not flag.startswith("--no-") else flag)
            want[f.name] = not f.default
        elif typing.get_origin(kind) is list:
            argv += [flag, "a", "b"]
            want[f.name] = ["a", "b"]
        elif choices:
            argv += [flag, str(choices[-1])]
            want[f.name] = choices[-1]
        else:
            raw, value = VALUES[kind]
            argv += [flag, raw]
            want[f.name] = value
    cfg = from_namespace(cls, parser().parse_args(argv), prefix)
    for name, value in want.items():
        got = getattr(cfg, name)
        assert got == value and type(got) is type(value), name


@pytest.mark.parametrize(
    ("old", "new", "field", "value"),
    [
        ("--gm-oracle-traj-len", "--gm-oracle-T", "T", 7),
        ("--gm-oracle-ref-max-examples", "--gm-oracle-ref-samples", "ref_samples", 7),
    ],
)
def test_removed_oracle_aliases(old, new, field, value):
    with pytest.raises(SystemExit):
        _oracle_parser().parse_args([old, "7"])
    cfg = from_namespace(OracleConfig, _oracle_parser().parse_args([new, "7"]), PREFIX)
    assert getattr(cfg, field) == value


def test_removed_reference_and_bootstrap_aliases():
    with pytest.raises(SystemExit):
        _oracle_parser().parse_args(["--gm-oracle-ref", "r.jsonl"])
    assert (
        from_namespace(
            OracleConfig, _oracle_parser().parse_args(["--gm-oracle-ref-data", "r.jsonl"]), PREFIX
        ).ref_data
        == "r.jsonl"
    )
    base = ["--model", "m", "--data-path", "d", "--output", "o"]
    with pytest.raises(SystemExit):
        bootstrap_parser().parse_args([*base, "--trajectory-length", "4"])
    assert bootstrap_parser().parse_args([*base, "--T", "4"]).T == 4


@pytest.mark.parametrize(
    ("assignment", "message"),
    [
        ("oracle.T=0", "oracle.T: a trajectory needs at least one step (T >= 1), got 0"),
        ("oracle.ref_samples=0", "oracle.ref_samples must be >= 1, got 0"),
        ("bootstrap.width=0", "bootstrap.width must be >= 1, got 0"),
        ("influence.mode=slow", "influence.mode must be full or fast, got 'slow'"),
        ("select.ratio=1.5", "select.ratio must be in (0, 1], got 1.5"),
        ("select.kmeans_iters=0", "select.kmeans_iters must be >= 1, got 0"),
        ("influence.chunk_len=-1", "influence.chunk_len must be >= 0, got -1"),
    ],
)
def test_plan_rejects_a_bad_tool_value_naming_the_field(assignment, message):
    cfg = preset("test")
    cfg.override("bootstrap.beams_per_tail=2")
    cfg.override(assignment)
    with pytest.raises(GMError) as e:
        cfg.validate(need_data=False)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)


def test_pipeline_dry_run_stops_on_a_bad_tool_value(tmp_path, capsys):
    rc = pipeline_cli.main(
        ["--dry-run", "--preset", "test", "--out", str(tmp_path / "run"), "--set", "oracle.T=0"]
    )
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: oracle.T: a trajectory needs") and err.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_saved_config_with_old_names_loads_under_the_new_ones(caplog):
    old = json.loads(preset("test").to_json())
    del old["oracle"]["T"], old["oracle"]["ref_samples"], old["oracle"]["ref_data"]
    old["oracle"]["traj_len"] = 7
    old["oracle"]["ref_max_examples"] = 5
    old["oracle"]["ref_path"] = "/r.jsonl"
    del old["bootstrap"]
    old["oracle"].update(bootstrap_beams=3, bootstrap_width=2, bootstrap_probe_count=11)
    with caplog.at_level(logging.WARNING):
        cfg = PipelineConfig.from_dict(old)
    assert (cfg.oracle.T, cfg.oracle.ref_samples, cfg.oracle.ref_data) == (7, 5, "/r.jsonl")
    assert (cfg.bootstrap.beams_per_tail, cfg.bootstrap.width, cfg.bootstrap.probe_count) == (3, 2, 11)
    assert "oracle.traj_len is now oracle.T" in caplog.text
    assert "oracle.bootstrap_beams is now bootstrap.beams_per_tail" in caplog.text


def test_set_with_an_old_name_names_the_new_one():
    with pytest.raises(GMError, match=r"--set oracle.traj_len: renamed to oracle.T"):
        preset("test").override("oracle.traj_len=4")


def test_check_settings_bounds():
    cfg = FilterConfig(data_path="d", positives="p", h_from="h", output="o", holdout=0.5)
    with pytest.raises(GMError, match=r"^--holdout must be in \[0, 0.5\), got 0.5$"):
        check_settings(cfg)
    cfg.holdout, cfg.lr = 0.0, 0.0
    with pytest.raises(GMError, match=r"^--lr must be > 0, got 0.0$"):
        check_settings(cfg)
    cfg.lr, cfg.seed = 0.1, 2**31
    with pytest.raises(GMError, match=r"^--seed must be in \[0, 2147483647\], got 2147483648$"):
        check_settings(cfg)


def test_select_threads_default_read_before_numpy():
    """select_data.py reads --threads before importing SelectConfig's module; the defaults must agree."""
    assert select_cli.DEFAULT_THREADS == 1 == SelectConfig(output="o", stage=0).threads
    assert select_cli.threads_flag(["--threads", "3"]) == 3 and select_cli.threads_flag(["--threads=2"]) == 2
    assert select_cli.threads_flag([]) is None and select_cli.threads_flag(["--threads", "x"]) is None


def test_generated_parser_requires_fields_without_default():
    p = add_dataclass_args(argparse.ArgumentParser(), BootstrapConfig)
    with pytest.raises(SystemExit):
        p.parse_args(["--model", "m", "--data-path", "d"])  # no --output

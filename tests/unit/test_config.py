"""The strict job configuration: every key declared, every value checked."""

import dataclasses
from pathlib import Path

import pytest

from mpisgd import models
from mpisgd.config import DEFAULT_JOB, MODEL_NAMES, load_config, parse_override, replace, to_toml
from mpisgd.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_default_job_is_jobs_linreg():
    assert load_config(None) == load_config(str(ROOT / "jobs" / "linreg.toml"))
    assert DEFAULT_JOB.is_file()


@pytest.mark.parametrize("job", sorted((ROOT / "jobs").glob("*.toml")), ids=lambda p: p.name)
def test_shipped_jobs_load(job):
    cfg = load_config(str(job))
    assert cfg.name


@pytest.mark.parametrize("override, message", [
    ("optimzer.lr=0.1", "Did you mean 'optimizer'"),
    ("optimizer.lrr=0.1", "Did you mean 'optimizer.lr'"),
    ("optimizer.lr=-1.0", "The 'optimizer.lr' parameter must be a float in (0, inf). Got -1.0"),
    ("optimizer.lr=nan", "must be a float"),
    ("train.batch_size=2.5", "The 'train.batch_size' parameter must be an int"),
    ("train.epochs=0", "must be an int in [1, inf)"),
    ("model.name='svm'", "must be one of 'linear', 'logistic', 'softmax', 'mlp'. Got 'svm'"),
    ("mode=ring", "must be one of 'allreduce', 'local', 'ps'"),
    ("data.test_fraction=1.0", "must be a float in [0, 1)"),
    ("train.shuffle=1", "must be a boolean"),
    ("optimizer=3", "is a section"),
    ("noequals", "expects key=value"),
])
def test_bad_values_name_key_and_constraint(override, message):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert message in str(info.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="nesterov"):
        load_config(None, ["optimizer.nesterov=true", "optimizer.momentum=0.0"])
    with pytest.raises(ConfigError, match="softmax"):
        load_config(None, ["data.synth.kind='multiclass'"])


def test_overrides_parse_toml_values():
    assert parse_override("a.b=3") == (["a", "b"], 3)
    assert parse_override("a=0.5") == (["a"], 0.5)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[64, 32]") == (["a"], [64, 32])
    assert parse_override("a=some/path.h5") == (["a"], "some/path.h5")


def test_relative_paths_follow_the_job_file(tmp_path):
    job = tmp_path / "sub" / "j.toml"
    job.parent.mkdir()
    job.write_text('[data]\ntrain = "d/train.h5"\n')
    cfg = load_config(str(job))
    assert cfg.data.train == str(tmp_path / "sub" / "d" / "train.h5")
    assert cfg.name == "j"


def test_syntax_error_and_missing_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[model\nname = 1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(str(bad))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.toml"))


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["optimizer.lr=0.25", "train.epochs=7", "name='x y'"])
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg))
    assert load_config(str(path)) == cfg


def test_docs_jobs_md_is_current():
    from mpisgd.config import reference_markdown

    assert (ROOT / "docs" / "jobs.md").read_text() == reference_markdown()


def test_a_loaded_job_is_frozen_and_replace_makes_a_checked_copy():
    cfg = load_config(None, ["optimizer.lr=0.3"])
    with pytest.raises(dataclasses.FrozenInstanceError, match="frozen after validation"):
        cfg.optimizer.lr = 1.0
    changed = replace(cfg, {"data.placement": "storage", "optimizer.lr": 0.15})
    assert (changed.data.placement, changed.optimizer.lr) == ("storage", 0.15)
    assert (cfg.data.placement, cfg.optimizer.lr) == ("partition", 0.3)   # untouched
    with pytest.raises(dataclasses.FrozenInstanceError):
        changed.data.placement = "partition"
    with pytest.raises(ConfigError, match="'optimizer.lr' parameter must be a float"):
        replace(cfg, {"optimizer.lr": -1.0})
    with pytest.raises(ConfigError, match="data.folds"):   # cross-field rules run too
        replace(cfg, {"data.folds": 3, "data.fold": 3})


def test_model_choices_and_tasks_come_from_the_registry():
    assert MODEL_NAMES == models.NAMES == tuple(models.REGISTRY)
    assert models.MODELS == ("linear", "logistic", "softmax")
    assert {models.suggest(t) for t in models.TASKS} == {"linear", "logistic", "softmax"}
    models.check_task("mlp", "multiclass", "x")
    with pytest.raises(ConfigError, match="cannot learn a binary task .*'logistic'"):
        models.check_task("linear", "binary", "dataset 'd'")

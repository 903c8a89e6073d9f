"""Config loading, overrides and validation: bad values give one-line errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from shieldtune.config import Config, config_from_dict, flatten, load_config
from shieldtune.errors import ConfigError
from shieldtune.job import load_job

REPO = Path(__file__).resolve().parents[1]


def test_defaults_are_one_whole_budget_run_over_a_cosine_baseline_with_an_adv_mix_ramp():
    cfg = config_from_dict({})
    assert isinstance(cfg, Config)
    space = {hp.name: hp for hp in cfg.env.search_space}
    assert list(space) == ["learning_rate", "batch_size", "adv_mix"]
    assert space["learning_rate"].schedule == "cosine" and space["adv_mix"].ramp == "up"
    assert cfg.tuner.episodes == 1 and cfg.env.steps_per_episode == 48


def test_example_config_file_loads_and_matches_defaults_where_documented():
    cfg = load_config(REPO / "configs" / "mnist-cnn.yaml")
    assert cfg.data.source == "bundled"
    assert cfg.safety.constraints


def test_example_config_documents_every_key_with_its_default():
    import yaml

    raw = yaml.safe_load((REPO / "configs" / "mnist-cnn.yaml").read_text())
    documented = {f"{section}.{key}" for section, values in raw.items() for key in values}
    assert documented == set(flatten(config_from_dict({})))
    assert flatten(config_from_dict(raw)) == flatten(config_from_dict({}))


def test_overrides_set_nested_keys_with_yaml_typed_values():
    cfg = load_config(
        None,
        ["tuner.episodes=3", "shield.enabled=false", "safety.constraints=[mia_advantage <= 0.1]"],
    )
    assert cfg.tuner.episodes == 3
    assert cfg.shield.enabled is False
    assert cfg.safety.constraints == ["mia_advantage <= 0.1"]


def test_search_space_accepts_extra_hyperparameters_without_code_changes():
    cfg = load_config(
        None,
        [
            "env.search_space=[{name: learning_rate, init: 0.05, low: 0.01, high: 0.4},"
            " {name: adv_mix, init: 0.0, low: 0.0, high: 0.5, scale: linear, factor: 0.25}]"
        ],
    )
    assert [hp.name for hp in cfg.env.search_space] == ["learning_rate", "adv_mix"]


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("tuner.episodes=0", ["tuner.episodes", "0", "[1, 100000]"]),
        ("tuner.episodes=abc", ["tuner.episodes", "'abc'", "integer"]),
        ("agent.gamma=1.5", ["agent.gamma", "1.5", "[0.0, 1.0]"]),
        ("training.optimizer=rmsprop", ["training.optimizer", "rmsprop", "sgd, adam"]),
        ("data.source=s3", ["data.source", "s3", "bundled, torchvision, idx"]),
        ("tuner.epsiodes=3", ["unknown config key 'tuner.epsiodes'", "episodes"]),
        ("shield.enabled=maybe", ["shield.enabled", "true or false"]),
        ("safety.constraints=[accuracy >= 0.5]", ["safety.constraints[0]", "unknown metric"]),
        ("agent.epsilon_start=0.01", ["agent.epsilon_end", "agent.epsilon_start"]),
        ("env.search_space=[]", ["env.search_space", "empty"]),
        (
            "env.search_space=[{name: learning_rate, init: 5, low: 0.1, high: 1}]",
            ["env.search_space[0].init", "5", "[0.1, 1"],
        ),
        (
            "env.search_space=[{name: batch_size, init: 64, low: 16, high: 512}]",
            ["env.search_space[0].integer", "batch_size"],
        ),
        (
            "env.search_space=[{name: momentum, init: 0.5, low: 0.0, high: 0.9}]",
            ["env.search_space[0]", "log", "low > 0"],
        ),
        ("env.search_space=[{name: dropout}]", ["env.search_space[0].name", "dropout"]),
        ("tuner.target_val_acc=.nan", ["tuner.target_val_acc", "finite"]),
        ("noequals", ["section.key=value"]),
    ],
)
def test_bad_values_are_rejected_with_one_line_error_naming_key_value_and_range(
    override, fragments
):
    with pytest.raises(ConfigError) as err:
        load_job(None, [override])  # what every entry point resolves: config, then its task
    message = str(err.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message


def test_missing_and_malformed_config_files_give_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tuner: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML at line"):
        load_config(bad)
    scalar = tmp_path / "scalar.yaml"
    scalar.write_text("42\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(scalar)


def test_flatten_gives_one_string_param_per_key_for_mlflow():
    flat = flatten(config_from_dict({}))
    assert flat["tuner.episodes"] == "1"
    assert flat["env.search_space"].startswith("[")
    assert all(isinstance(v, str) for v in flat.values())

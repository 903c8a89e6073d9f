"""Fuzzing configs: bad input is refused with one line, never a traceback.

Every way a user hands shieldtune a config (a dict, a ``--set`` string, a YAML file) is driven
with hypothesis-generated values built from the real config schema and mixed with hostile ones
(``fuzz_strategies``). The contract under test is the one the CLI promises: a user error is a
:class:`~shieldtune.errors.ConfigError` whose message is one line (naming the key where there is
one); any other exception, or a multi-line message, is a bug. (The command line itself:
test_fuzz_cli.py.)
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from typing import Any

import pytest
from hypothesis import event, example, given
from hypothesis import strategies as st

from shieldtune.config import Config, apply_override, config_from_dict, load_config
from shieldtune.errors import ConfigError

from .fuzz_strategies import (
    ALIAS_BOMB,
    ALL_KEYS,
    FIELDS,
    FILE_CONTENTS,
    FUZZ,
    HOSTILE,
    HUGE_INT,
    OVERRIDES,
    SECTIONS,
    SPEC_FIELDS,
    assert_one_line,
    config_dicts,
)


def accepted_or_refused_in_one_line(build: typing.Callable[[], Any]) -> ConfigError | None:
    """Run ``build``; it may succeed or raise a one-line ConfigError, nothing else."""
    try:
        result = build()
    except ConfigError as exc:
        assert_one_line(str(exc))
        event("refused")
        return exc
    assert isinstance(result, Config)
    event("accepted")
    return None


# --------------------------------------------------------------------------- 1. dicts


@FUZZ
@given(config_dicts())
@example({"data": {"train_size": math.nan}})  # int(nan) raised ValueError
@example({"data": {"train_size": math.inf}})  # int(inf) raised OverflowError
@example({"training": {"learning_rate": 10**400}})  # float(10**400) raised OverflowError
@example({"training": {"batch_size": HUGE_INT}})  # repr() of a 5000-digit int raised
@example({"safety": {"constraints": [HUGE_INT]}})
@example({"a\nb": 1})  # the unknown key was printed raw, newline and all
@example({"data": {"x\ry": 1}})
@example({HUGE_INT: 1})
def test_config_from_dict_accepts_or_refuses_with_one_line_config_error(data):
    """Whatever a raw config holds, building it gives a Config or a one-line ConfigError."""
    accepted_or_refused_in_one_line(lambda: config_from_dict(data))


INJECTION_PATHS = st.one_of(
    st.sampled_from(ALL_KEYS),
    st.sampled_from(sorted(FIELDS)),
    st.sampled_from([f"env.search_space[0].{k}" for k in SPEC_FIELDS]),
    st.builds(
        "{}.zz_{}".format,
        st.sampled_from(sorted(FIELDS)),
        st.from_regex(r"[a-z]{1,6}", fullmatch=True),
    ),
)


@FUZZ
@given(INJECTION_PATHS, HOSTILE)
@example("data.val_size", 10)  # refused through a cross-field rule that must name it too
@example("agent.epsilon_start", 0.0)
@example("env.search_space[0].low", 2.0)
@example("tuner.worker_threads", math.nan)
def test_one_bad_value_is_refused_with_a_message_naming_its_key(path, value):
    """A single bad value in otherwise default config is refused by a message naming its key."""
    data: dict[str, Any] = {}
    match = re.fullmatch(r"env\.search_space\[0\]\.(\w+)", path)
    if match:
        data["env"] = {"search_space": [{"name": "learning_rate", match[1]: value}]}
        named = "env.search_space[0]"
    elif "." in path:
        section, key = path.split(".")
        data[section] = {key: value}
        named = path
    else:
        data[path] = value
        named = path
    err = accepted_or_refused_in_one_line(lambda: config_from_dict(data))
    if err is not None:
        assert named in str(err), str(err)[:300]


# --------------------------------------------------------------------------- 2. --set


@FUZZ
@given(st.lists(OVERRIDES, min_size=1, max_size=4))
@example(["tuner.seed=\x07"])  # yaml ReaderError has no .problem: AttributeError
@example(["tuner.seed=" + "[" * 3000 + "]" * 3000])  # RecursionError from the YAML composer
@example(["tuner.seed=" + "9" * 5000])  # ValueError: too many digits for int()
@example(["tuner.seed=2020-13-45"])  # ValueError from datetime.date()
@example(["tuner.seed=!!timestamp abc"])  # AttributeError inside PyYAML
@example(["tuner.seed=!!float abc"])  # ValueError inside PyYAML
@example(["a\nb.c=1"])  # the unknown section was printed raw, newline and all
@example(["tuner=1", "tuner.x\ry=1"])
def test_set_overrides_are_applied_or_refused_with_one_line_config_error(overrides):
    """Any ``--set`` strings give a Config or a one-line ConfigError (no YAML code execution)."""
    accepted_or_refused_in_one_line(lambda: load_config(None, overrides))


@FUZZ
@given(OVERRIDES)
@example("a=!!python/object/apply:os.system ['echo pwned']")
def test_apply_override_leaves_a_dict_or_refuses_in_one_line(assignment):
    """apply_override either patches the raw dict (with plain YAML data only) or refuses."""
    data: dict[str, Any] = {}
    try:
        apply_override(data, assignment)
    except ConfigError as exc:
        assert_one_line(str(exc))
        return
    assert only_plain_data(data)


def only_plain_data(value: Any, depth: int = 0) -> bool:
    """True if ``value`` holds nothing but what ``yaml.safe_load`` may build (no objects)."""
    import datetime

    if depth > 20 or isinstance(value, str | bytes | int | float | bool | type(None)):
        return True  # deeper than 20 levels: aliases can make it cyclic
    if isinstance(value, datetime.date):
        return True
    if isinstance(value, dict):
        items = [*value.keys(), *value.values()]
    elif isinstance(value, list | set):
        items = list(value)
    else:
        return False
    return all(only_plain_data(item, depth + 1) for item in items[:50])


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(lambda: load_config(None, [f"tuner.seed={ALIAS_BOMB}"]), id="alias-bomb"),
        pytest.param(lambda: load_config(None, ["data.source=" + "s" * 4000]), id="long-string"),
        pytest.param(lambda: config_from_dict({"tuner": {"seed": [HUGE_INT]}}), id="huge-int"),
        pytest.param(lambda: config_from_dict({"data": {"x" * 4000: 1}}), id="long-key"),
    ],
)
def test_errors_about_huge_values_stay_short(build):
    """A value is quoted in an error cut short: an alias bomb once made a 6 MB 'one line'."""
    with pytest.raises(ConfigError) as err:
        build()
    assert_one_line(str(err.value))
    assert len(str(err.value)) < 400, len(str(err.value))


# --------------------------------------------------------------------------- 3. files


@FUZZ
@given(FILE_CONTENTS)
@example(b"tuner: {seed: " + b"9" * 5000 + b"}\n")  # ValueError: too many digits for int()
@example(b"[" * 5000 + b"]" * 5000)  # RecursionError from the YAML composer
@example(b"tuner: {seed: 2020-13-45}\n")  # ValueError from datetime.date()
def test_config_files_load_or_are_refused_with_one_line_config_error(tmp_path, contents):
    """Any bytes in a config file give a Config or a one-line ConfigError."""
    path = tmp_path / "config.yaml"
    path.write_bytes(contents)
    accepted_or_refused_in_one_line(lambda: load_config(path))


@FUZZ
@given(st.text(max_size=40) | st.sampled_from(["x" * 5000, "a\nb.yaml", ".", "/", "\x00"]))
@example("x" * 5000)  # Path.is_file() raised OSError (File name too long)
@example("missing\nfile.yaml")  # the path was printed raw, newline and all
def test_config_file_paths_that_are_not_files_are_refused_in_one_line(tmp_path, name):
    """A --config path that names no readable file is refused with a one-line ConfigError."""
    with pytest.raises(ConfigError) as err:
        load_config(name if name in (".", "/") else f"{tmp_path}/missing/{name}")
    assert_one_line(str(err.value))


# --------------------------------------------------------------------------- 4. generators
def test_fuzz_generators_cover_every_config_key():
    """The generators read the dataclasses, so a key added to config.py is fuzzed at once."""
    assert set(FIELDS) == {f.name for f in dataclasses.fields(Config)}
    assert "tuner.seed" in ALL_KEYS and "kubernetes.image" in ALL_KEYS
    assert len(ALL_KEYS) == sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values())

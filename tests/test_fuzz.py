"""Fuzzing configs and command lines: bad input is refused with one line, never a traceback.

Every way a user hands shieldtune input (a dict, a ``--set`` string, a YAML file, a command
line) is driven with hypothesis-generated values built from the real config schema and mixed
with hostile ones (NaN, huge integers, NUL, newlines, 5000-character strings, YAML tags,
deep nesting). The contract under test is the one the CLI promises: a user error is a
:class:`~shieldtune.errors.ShieldtuneError` whose message is one line (naming the key where
there is one); any other exception, or a multi-line message, is a bug.

The CLI cases only generate argument vectors that are refused before any work starts; as a
safety net, every entry point that would start work (tuning, training, pipeline compilation,
KFP calls, MLflow) is replaced by a stub that fails the test if reached.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import typing
from typing import Any

import pytest
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from shieldtune import config as config_module
from shieldtune.cli import main
from shieldtune.config import Config, apply_override, config_from_dict, load_config
from shieldtune.errors import ConfigError, ShieldtuneError
from shieldtune.pipeline import remote

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
CLI_FUZZ = settings(FUZZ, max_examples=100)

HUGE_INT = 10**5000  # more digits than Python will turn into a string (sys.int_info)
#: Drawn lazily: hypothesis prints a strategy's constants when it reports, and repr(HUGE_INT)
#: itself raises ValueError.
HUGE_INTS = st.sampled_from([1, -1]).map(lambda sign: sign * HUGE_INT)


def assert_one_line(message: str) -> None:
    assert message, "an error must say something"
    assert len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, ascii(
        message[:500]
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


def one_in(n: int, draw: st.DrawFn) -> bool:
    """True about once in ``n`` draws (a middle value: hypothesis favours 0 and the bounds)."""
    return draw(st.integers(0, n - 1)) == n // 2


# --------------------------------------------------------------------------- the schema

SECTIONS: dict[str, type] = typing.get_type_hints(Config)
FIELDS: dict[str, dict[str, dataclasses.Field]] = {
    name: {f.name: f for f in dataclasses.fields(cls)} for name, cls in SECTIONS.items()
}
SPEC_FIELDS = {f.name: f for f in dataclasses.fields(config_module.HyperparameterSpec)}
SPEC_HINTS = typing.get_type_hints(config_module.HyperparameterSpec)
HINTS = {name: typing.get_type_hints(cls) for name, cls in SECTIONS.items()}
ALL_KEYS = [f"{s}.{k}" for s, fields in FIELDS.items() for k in fields]
ALL_HINTS = {f"{s}.{k}": hint for s, hints in HINTS.items() for k, hint in hints.items()}

# --------------------------------------------------------------------------- values

NASTY_STRINGS = st.sampled_from(
    [
        "",
        " ",
        "x" * 5000,
        "a\x00b",
        "line\nbreak",
        "carriage\rreturn",
        "sep\u2028arator",
        "tab\there",
        "é🙂",
        "1e999",
        "nan",
        "None",
        "-",
        "--set",
        "'quoted'",
        '"',
        "{",
        "fgsm_robust_acc >= 2",
        "val_acc <= nan",
        "mia_advantage <= 1e999",
    ]
)
NASTY_NUMBERS = st.sampled_from(
    [
        0,
        -1,
        2**31,
        2**63,
        -(2**63),
        10**400,
        math.nan,
        math.inf,
        -math.inf,
        -0.0,
        1e308,
        -1e308,
        5e-324,
        0.5,
        1.5,
    ]
)
HOSTILE_SCALARS = st.one_of(
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    NASTY_NUMBERS,
    HUGE_INTS,
    st.booleans(),
    st.none(),
    st.text(max_size=12),
    NASTY_STRINGS,
)
HOSTILE_KEYS = st.one_of(
    st.text(max_size=8),
    st.sampled_from([*FIELDS, *SPEC_FIELDS, "a\nb", "", "x" * 5000, "\x00"]),
    st.integers(),
    st.sampled_from([None, True, 1.5]),
    HUGE_INTS,
)
HOSTILE = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_KEYS, inner, max_size=3),
    max_leaves=6,
)


def plausible(f: dataclasses.Field, annotation: Any) -> st.SearchStrategy[Any]:
    """Values a user could mean for this field, in range or just outside it."""
    meta = f.metadata
    options: list[st.SearchStrategy[Any]] = []
    if f.default is not dataclasses.MISSING:
        options.append(st.just(f.default))
    if "choices" in meta:
        options.append(st.sampled_from(meta["choices"]))
    if "pattern" in meta:
        options.append(st.just(meta["pattern"][1]))
    lo, hi = meta.get("range", (None, None))
    bounds = [b for b in (lo, hi) if b is not None]
    options.extend(st.just(b) for b in bounds)
    if annotation in (int, int | None):
        options.append(st.integers(min_value=lo, max_value=hi) if bounds else st.integers())
    elif annotation in (float, float | None):
        options.append(st.floats(lo, hi) if bounds else st.floats(-1e6, 1e6))
    elif annotation is bool:
        options.append(st.booleans())
    elif annotation in (str, str | None):
        options.append(st.text(max_size=16))
    return st.one_of(options) if options else st.nothing()


CONSTRAINTS = st.builds(
    "{} {} {}".format,
    st.sampled_from(["val_acc", "fgsm_robust_acc", "pgd_robust_acc", "mia_advantage", "acc"]),
    st.sampled_from([">=", "<=", ">", "=="]),
    st.sampled_from(["0.5", "0", "-1", "1.5", "1e999", "nan", "0.7.1"]),
)
SPEC = st.dictionaries(
    st.sampled_from(sorted(SPEC_FIELDS)),
    st.deferred(lambda: st.one_of(*SPEC_VALUES.values(), HOSTILE)),
    max_size=len(SPEC_FIELDS),
)
SPEC_VALUES = {name: plausible(f, SPEC_HINTS[name]) for name, f in SPEC_FIELDS.items()}


def value_for(section: str, key: str) -> st.SearchStrategy[Any]:
    if (section, key) == ("env", "search_space"):
        return st.one_of(st.lists(SPEC, max_size=3), HOSTILE)
    if (section, key) == ("safety", "constraints"):
        return st.one_of(st.lists(CONSTRAINTS | NASTY_STRINGS, max_size=3), HOSTILE)
    return st.one_of(plausible(FIELDS[section][key], HINTS[section][key]), HOSTILE)


@st.composite
def config_dicts(draw: st.DrawFn) -> Any:
    """A raw config: some real sections with some real keys, plus the odd unknown or non-dict."""
    if one_in(20, draw):
        return draw(HOSTILE)  # not a mapping at all
    data: dict[Any, Any] = {}
    for section in draw(st.lists(st.sampled_from(sorted(FIELDS)), unique=True, max_size=4)):
        if one_in(10, draw):
            data[section] = draw(HOSTILE)
            continue
        keys = draw(st.lists(st.sampled_from(sorted(FIELDS[section])), unique=True, max_size=4))
        data[section] = {key: draw(value_for(section, key)) for key in keys}
        if one_in(10, draw):
            data[section][draw(HOSTILE_KEYS)] = draw(HOSTILE)
    if one_in(10, draw):
        data[draw(HOSTILE_KEYS)] = draw(HOSTILE)
    return data


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


#: Six levels of eight aliases: tiny as text, 8**6 leaves once printed (a 6 MB message).
ALIAS_BOMB = (
    "["
    + ", ".join(f"&l{i} [{', '.join([f'*l{i - 1}' if i else '1'] * 8)}]" for i in range(6))
    + "]"
)

YAML_VALUES = st.sampled_from(
    [
        "",
        "~",
        "null",
        ".nan",
        "-.inf",
        "1e999",
        "9" * 5000,
        "0x1F",
        "0o17",
        "1_000",
        "[1, 2",
        "{a: 1, b: [2, {c: 3}]}",
        "{learning_rate: 0.1}",
        "[{name: learning_rate, init: 0.05, low: 0.01, high: 0.4}]",
        "&a [*a]",
        "&a {x: *a}",
        ALIAS_BOMB,
        "*undefined",
        "!!python/object:os.system ls",
        "!!python/object/apply:os.system [ls]",
        "!!python/name:os.system",
        "!!binary '!!not base64'",
        "!!float abc",
        "!!int abc",
        "!!timestamp abc",
        "!!set {a, b}",
        "!!omap [a: 1]",
        "!!str",
        "!custom 1",
        "2020-13-45",
        "2020-02-30 25:61:61",
        "? [a]\n: 1",
        "a: b: c",
        "'unterminated",
        '"bad \\q escape"',
        "\t1",
        "\x07",
        "\x00",
        "\ud800",
        "\ufeff1",
        "%YAML 1.1\n--- 1",
        "--- 1\n--- 2",
        "[" * 3000 + "]" * 3000,
        "{a: " * 1000 + "1" + "}" * 1000,
        "- " * 500 + "1",
        "|\n  block\n  text",
        ">\n folded",
    ]
)
OVERRIDE_KEYS = st.one_of(
    st.sampled_from(ALL_KEYS),
    st.sampled_from(sorted(FIELDS)),
    st.text(max_size=12),
    st.sampled_from(["", ".", "a..b", " tuner . seed ", "tuner.seed.x", "a\nb.c", "x" * 5000]),
)
PLAUSIBLE_OVERRIDES = st.sampled_from(ALL_KEYS).flatmap(
    lambda key: plausible(FIELDS[key.split(".")[0]][key.split(".")[1]], ALL_HINTS[key]).map(
        lambda value: f"{key}={json.dumps(value)}"  # JSON is YAML
    )
)
OVERRIDES = st.one_of(
    st.builds("{}={}".format, OVERRIDE_KEYS, YAML_VALUES | st.text(max_size=20)),
    PLAUSIBLE_OVERRIDES,
    st.text(max_size=30),
)


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


def yaml_text_of(data: Any) -> str:
    import yaml

    try:
        return yaml.safe_dump(data, allow_unicode=True)
    except (ValueError, yaml.YAMLError):  # a 5000-digit int cannot be dumped either
        return "tuner: {seed: 1}\n"


FILE_CONTENTS = st.one_of(
    st.binary(max_size=64),
    st.sampled_from(
        [
            b"\xff\xfe\x00t",
            b"tuner:\n  seed: \xff\n",
            b"\xef\xbb\xbftuner: {seed: 1}\n",
            b"- 1\n- 2\n",
            b"42\n",
            b"~\n",
            b"",
            b"--- 1\n--- 2\n",
            b"tuner: [unclosed\n",
            b"tuner:\n\tseed: 1\n",
            b"tuner: !!python/object/apply:os.system [ls]\n",
            b"tuner: {seed: 2020-13-45}\n",
            b"tuner: {seed: " + b"9" * 5000 + b"}\n",
            b"[" * 5000 + b"]" * 5000,
            b"".join(b"  " * i + b"k:\n" for i in range(2000)),
            b"&a [*a]\n",
            b"? [1, 2]\n: x\n",
            b"{[1]: 2}\n",
        ]
    ),
    st.text(max_size=64).map(lambda s: s.encode("utf-8", "surrogatepass")),
    config_dicts().map(lambda d: yaml_text_of(d).encode("utf-8", "surrogatepass")),
    YAML_VALUES.map(lambda v: ("tuner:\n  seed: " + v + "\n").encode("utf-8", "surrogatepass")),
)


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


@FUZZ
@given(
    FILE_CONTENTS.filter(lambda b: b"pipelineInfo" not in b),
    st.sampled_from(["p.yaml", "p.YML", "p.json", "missing/p.yaml", "x" * 5000 + ".yaml"]),
)
@example(b"[" * 5000 + b"]" * 5000, "p.yaml")  # RecursionError from the YAML composer
@example(b"a: " + b"9" * 5000 + b"\n", "p.yaml")  # ValueError: too many digits for int()
@example(b"", "x" * 5000 + ".yaml")  # Path.is_file() raised OSError (File name too long)
def test_pipeline_packages_that_are_not_pipelines_are_refused_in_one_line(
    tmp_path, monkeypatch, contents, name
):
    """``pipeline upload --package`` refuses a non-pipeline file in one line, before any call."""
    monkeypatch.setattr(remote, "_session", _refuse_work)
    path = tmp_path / name
    if not name.startswith(("missing", "x")):
        path.write_bytes(contents)
    target = remote.KfpTarget("http://127.0.0.1:9")
    with pytest.raises(ConfigError) as err:
        remote.upload(target, path, "shieldtune-tuning-pipeline")
    assert_one_line(str(err.value))


# --------------------------------------------------------------------------- 4. the CLI


class WorkStarted(Exception):
    """Raised by the stubs below: the generated arguments were valid enough to start work."""


def _refuse_work(*args: Any, **kwargs: Any) -> Any:
    raise WorkStarted("the fuzzer generated arguments that start real work")


@pytest.fixture
def cli_sandbox(tmp_path, monkeypatch):
    """An empty working folder, no KFP host, and every work entry point stubbed out."""
    import gymnasium.utils.env_checker
    import torch

    import shieldtune.control.env
    import shieldtune.control.tuner
    import shieldtune.executors.step_files
    import shieldtune.pipeline.local_run
    import shieldtune.pipeline.pipelines
    import shieldtune.tasks.checker
    import shieldtune.training.step

    monkeypatch.chdir(tmp_path)
    for var in ("KFP_HOST", "KFP_NAMESPACE", "KFP_BEARER_TOKEN", "KFP_EXPERIMENT"):
        monkeypatch.delenv(var, raising=False)
    for module, name in [
        (shieldtune.control.tuner, "run_tuning"),
        (shieldtune.control.env, "HyperparamEnv"),
        (gymnasium.utils.env_checker, "check_env"),
        (shieldtune.training.step, "StepRunner"),
        (shieldtune.tasks.checker, "check_task"),
        (shieldtune.executors.step_files, "MlflowStepStore"),
        (shieldtune.pipeline.local_run, "run_local"),
        (shieldtune.pipeline.pipelines, "compile_all"),
        (remote, "upload"),
        (remote, "run"),
        (remote, "schedule"),
        (torch, "set_num_threads"),
    ]:
        monkeypatch.setattr(module, name, _refuse_work)
    return tmp_path


def refused_cleanly(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``main(argv)`` refuses: argparse's usage + error (exit 2) or one ``shieldtune: error``."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exc:
        out = capsys.readouterr()
        assert exc.code == 2, (exc.code, out.err[-500:])
        assert "Traceback" not in out.err + out.out
        errors = [line for line in out.err.splitlines() if ": error: " in line]
        assert errors and errors[0].startswith("shieldtune"), out.err[-500:]
        event("refused by argparse")
        return
    out = capsys.readouterr()
    assert code == 2, (code, out.err[-500:])
    assert "Traceback" not in out.err + out.out
    assert out.err.startswith("shieldtune: error: ") and out.err.count("\n") == 1, ascii(
        out.err[:500]
    )
    assert_one_line(out.err.rstrip("\n"))
    event("refused by shieldtune")


#: Flags no subcommand has, and that are no abbreviation of one (argparse accepts those).
UNKNOWN_FLAGS = st.builds("--x-{}".format, st.text(max_size=8)) | st.sampled_from(["-Z", "-Q"])
MISSING_PATHS = st.builds(
    "missing-{}{}".format,
    st.text(max_size=12),
    st.sampled_from(["", ".yaml", "/x.yaml", "x" * 5000, "\nnext", "\x00"]),
)
#: An override that no later argument can repair: it is always last, and always wrong.
BAD_LAST_SET = st.one_of(
    st.sampled_from(
        [
            "tuner.episodes=0",
            "agent.gamma=.nan",
            "data.source=s3",
            "tuner=5",
            "noequals",
            "=1",
            "tuner.seed=2020-13-45",
            "tuner.seed=\x07",
            "tuner.seed=" + "[" * 3000,
            "safety.constraints=[acc >= 0.5]",
            "tuner.seed=!!python/object/apply:os.system [ls]",
        ]
    ),
    st.builds("zz{}.{}={}".format, st.text(max_size=6), OVERRIDE_KEYS, YAML_VALUES),
)


@st.composite
def free_options(draw: st.DrawFn) -> list[str]:
    """Mostly fuzzed ``--set`` overrides; now and then an unknown flag or a missing value."""
    tokens: list[str] = []
    for _ in range(draw(st.integers(0, 3))):
        if one_in(6, draw):
            tokens += [*draw(st.sampled_from([[], ["x"], ["--config"]])), draw(UNKNOWN_FLAGS)]
        else:
            tokens += ["--set", draw(OVERRIDES)]
    return tokens


FREE_OPTIONS = free_options()


@st.composite
def invalid_config_args(draw: st.DrawFn) -> list[str]:
    """--config/--set arguments that always end in a refusal (a missing file or a bad --set)."""
    args = draw(FREE_OPTIONS)
    if draw(st.booleans()):
        return [*args, "--config", draw(MISSING_PATHS)]
    return [*args, "--set", draw(BAD_LAST_SET)]


@CLI_FUZZ
@given(st.sampled_from(["tune", "env-check"]), invalid_config_args())
@example("tune", ["--set", "tuner.seed=" + "9" * 5000])
@example("tune", ["--config", "missing-" + "x" * 5000])  # OSError: File name too long
@example("env-check", ["--set", "a\nb.c=1"])
def test_tune_and_env_check_refuse_bad_configs_in_one_line(cli_sandbox, capsys, command, args):
    """``tune``/``env-check`` with a bad config exit 2 with one error line, no traceback."""
    refused_cleanly([command, *args], capsys)


RUN_IDS = st.one_of(
    st.text(max_size=20),
    st.from_regex(r"[0-9a-f]{32}", fullmatch=True),
    st.sampled_from(["", ".", "..", "../x", "a/b", "run\nid", "x" * 5000, "\x00"]),
)


@CLI_FUZZ
@given(FREE_OPTIONS, RUN_IDS)
@example([], "run\nid")  # the run id and path were printed raw, newline and all
@example([], "x" * 5000)  # Path.is_file() raised OSError (File name too long)
@example([], "")  # an empty --resume "$RUN_ID" started a fresh tuning job instead
def test_tune_resume_of_a_run_without_saved_state_is_refused_in_one_line(
    cli_sandbox, capsys, options, run_id
):
    """``tune --resume`` of a run with no saved state (here: none at all) exits 2 in one line."""
    refused_cleanly(["tune", *options, f"--resume={run_id}"], capsys)


@st.composite
def evaluate_argv(draw: st.DrawFn) -> list[str]:
    """``evaluate`` with a missing checkpoint or a non-``models:/`` URI, plus config noise."""
    if draw(st.booleans()):
        source = ["--checkpoint", draw(MISSING_PATHS)]
    else:
        uri = draw(st.text(max_size=20).filter(lambda u: not u.startswith("models:/")))
        source = [f"--model-uri={uri}"]
    noise = draw(FREE_OPTIONS | invalid_config_args())
    if one_in(5, draw):
        noise = [*noise, f"--output={draw(st.text(max_size=10))}"]
    if one_in(10, draw):
        source = []  # neither --checkpoint nor --model-uri: argparse refuses
    return ["evaluate", *noise, *source] if draw(st.booleans()) else ["evaluate", *source, *noise]


@CLI_FUZZ
@given(evaluate_argv())
@example(["evaluate", "--checkpoint", "missing-" + "x" * 5000])  # OSError: File name too long
@example(["evaluate", "--checkpoint", "missing\nnext.pt"])  # the path was printed raw
def test_evaluate_refuses_missing_checkpoints_and_bad_uris_in_one_line(cli_sandbox, capsys, argv):
    """``evaluate`` with no usable checkpoint or URI exits 2 with one error line."""
    refused_cleanly(argv, capsys)


VALID_STEP_ID = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
BAD_STEP_ID = st.one_of(
    st.text(max_size=20).filter(
        lambda s: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}", s) is None
    ),
    st.sampled_from(["", "../etc", "a/b", "x" * 200, "s1\n", ".hidden", "a\x00"]),
)
BAD_STORE = st.one_of(
    st.text(max_size=20).filter(lambda s: not s.startswith(("dir:", "mlflow:"))),
    st.sampled_from(["dir:", "mlflow:", "s3://bucket", "DIR:/x", " dir:/x"]),
)
MISSING_DIR_STORE = st.builds(
    "dir:missing-{}{}".format, st.text(max_size=12), st.sampled_from(["", "x" * 5000, "\nx"])
)


@st.composite
def step_argv(draw: st.DrawFn) -> list[str]:
    """``step`` that fails validation, or reads a request that isn't there (never trains)."""
    kind = draw(st.integers(0, 3))
    if kind == 0:  # bad step id: refused before the store is opened, whatever the store
        store = draw(BAD_STORE | MISSING_DIR_STORE | st.just("mlflow:run123"))
        step_id = draw(BAD_STEP_ID)
    elif kind == 1:
        store, step_id = draw(BAD_STORE), draw(VALID_STEP_ID)
    elif kind == 2:
        store, step_id = draw(MISSING_DIR_STORE), draw(VALID_STEP_ID)
    else:  # out-of-range thread count, refused before the store is opened
        store, step_id = draw(MISSING_DIR_STORE | st.just("mlflow:run123")), draw(VALID_STEP_ID)
    argv = ["step", f"--store={store}", f"--step-id={step_id}"]
    if kind == 3:
        threads = draw(st.integers(max_value=0) | st.integers(min_value=1025))
        argv.append(f"--threads={threads}")
    elif one_in(5, draw):
        argv.append(f"--threads={draw(st.text(max_size=5))}")  # usually not an int: argparse
    if one_in(5, draw):
        argv.append(draw(UNKNOWN_FLAGS))
    if one_in(10, draw):
        argv = argv[: draw(st.integers(1, 2))]  # a required option missing
    return argv


@CLI_FUZZ
@given(step_argv())
@example(["step", "--store=dir:missing-" + "x" * 5000, "--step-id=s1"])  # File name too long
@example(["step", "--store=dir:missing\nx", "--step-id=s1"])  # the path was printed raw
def test_step_refuses_bad_ids_stores_and_threads_in_one_line(cli_sandbox, capsys, argv):
    """``step`` with a bad id, store, thread count or missing request exits 2 with one line."""
    refused_cleanly(argv, capsys)


BAD_HOSTS = st.one_of(
    st.just(""),  # empty counts as unset
    st.text(max_size=20).filter(lambda h: not h.startswith(("http://", "https://"))),
)
BAD_CRON = st.one_of(
    st.text(max_size=20).filter(lambda c: len(c.split()) not in (5, 6)),
    st.sampled_from(["", "* * * *", "0 3 * * 1 2 3", "\n"]),
)


@st.composite
def pipeline_argv(draw: st.DrawFn) -> list[str]:
    """``pipeline ...`` refused before compiling or calling KFP: no host, a bad one, bad config."""
    action = draw(st.sampled_from(["compile", "run", "upload", "schedule"]))
    if action == "compile":  # compile does its work at once; only argparse refusals here
        bad = draw(st.sampled_from([["--output-dir"], ["--base-image"], ["--set", "x=1"]]))
        return ["pipeline", "compile", *draw(FREE_OPTIONS), *bad]
    argv = ["pipeline", action]
    local = action == "run" and draw(st.booleans())
    if local:  # a local run starts at once: its config must be bad
        argv += ["--local", *draw(invalid_config_args())]
        if draw(st.booleans()):
            argv.append(f"--workdir={draw(st.text(max_size=8))}")
    else:
        argv += draw(FREE_OPTIONS | invalid_config_args())
        if draw(st.booleans()):
            argv.append(f"--host={draw(BAD_HOSTS)}")
        elif draw(st.booleans()):
            argv += ["--host=http://127.0.0.1:9", "--experiment=  "]
    for flag in ("--namespace", "--token", "--package", "--name"):
        if one_in(4, draw):
            argv.append(f"{flag}={draw(st.text(max_size=10))}")
    if one_in(5, draw):
        argv.append(f"--pipeline={draw(st.sampled_from(['tuning_pipeline', 'nope', '']))}")
    if action == "schedule" and not one_in(10, draw):
        argv.append(f"--cron={draw(BAD_CRON)}")
    if action in ("run", "schedule") and draw(st.booleans()):
        argv.append(f"--service-account={draw(st.text(max_size=10))}")
    return argv


@CLI_FUZZ
@given(pipeline_argv())
@example(["pipeline", "upload", "--host=localhost:8080"])
@example(["pipeline", "run", "--local", "--set", "tuner.seed=2020-13-45"])
@example(["pipeline", "schedule", "--cron=* * *"])
def test_pipeline_commands_refuse_before_compiling_or_calling_kfp(cli_sandbox, capsys, argv):
    """``pipeline`` subcommands with a bad host, config or flag exit 2 with one error line."""
    refused_cleanly(argv, capsys)


@FUZZ
@given(BAD_CRON | st.text(max_size=30))
def test_cron_expressions_convert_or_are_refused_in_one_line(cron):
    """A ``--cron`` value becomes KFP's 6-field form or a one-line ConfigError."""
    try:
        converted = remote.to_kfp_cron(cron)
    except ConfigError as exc:
        assert_one_line(str(exc))
    else:
        assert len(converted.split(" ")) == 6


@FUZZ
@given(
    st.none() | st.text(max_size=20),
    st.none() | st.text(max_size=10),
    st.none() | st.text(max_size=10),
)
def test_kfp_targets_are_built_or_refused_in_one_line(monkeypatch, host, namespace, experiment):
    """KFP host/namespace/experiment values give a target or a one-line ShieldtuneError."""
    for var in ("KFP_HOST", "KFP_NAMESPACE", "KFP_BEARER_TOKEN", "KFP_EXPERIMENT"):
        monkeypatch.delenv(var, raising=False)
    try:
        target = remote.KfpTarget.from_env(host, namespace, None, experiment)
    except ShieldtuneError as exc:
        assert_one_line(str(exc))
    else:
        assert target.host.startswith(("http://", "https://"))


def test_fuzz_generators_cover_every_config_key():
    """The generators read the dataclasses, so a key added to config.py is fuzzed at once."""
    assert set(FIELDS) == {f.name for f in dataclasses.fields(Config)}
    assert "tuner.seed" in ALL_KEYS and "kubernetes.image" in ALL_KEYS
    assert len(ALL_KEYS) == sum(len(dataclasses.fields(cls)) for cls in SECTIONS.values())

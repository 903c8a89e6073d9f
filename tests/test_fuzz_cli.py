"""Fuzzing command lines: every CLI command refuses bad input with one line, never a traceback.

``tune``, ``env-check``, ``evaluate``, ``step`` and the ``pipeline`` subcommands are driven
with hypothesis-generated argument vectors (``fuzz_strategies`` plus the generators here), as
are pipeline packages, ``--cron`` values and KFP targets. A refusal is argparse's usage and
error (exit 2) or one ``shieldtune: error:`` line; any other exception, or a multi-line
message, is a bug.

The CLI cases only generate argument vectors that are refused before any work starts; as a
safety net, every entry point that would start work (tuning, training, pipeline compilation,
KFP calls, MLflow) is replaced by a stub that fails the test if reached.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from hypothesis import event, example, given, settings
from hypothesis import strategies as st

from shieldtune.cli import main
from shieldtune.errors import ConfigError, ShieldtuneError
from shieldtune.pipeline import remote

from .fuzz_strategies import (
    FILE_CONTENTS,
    FUZZ,
    OVERRIDE_KEYS,
    OVERRIDES,
    YAML_VALUES,
    assert_one_line,
    one_in,
)

CLI_FUZZ = settings(FUZZ, max_examples=100)


# --------------------------------------------------------------------------- 1. packages
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


# --------------------------------------------------------------------------- 2. the CLI


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

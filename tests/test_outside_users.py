"""What a new user's plug-in and first jobs ran into (issue "Round 3 for outside users")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from shieldtune.cli import main
from shieldtune.config import config_from_dict
from shieldtune.errors import ConfigError
from shieldtune.job import Job
from shieldtune.tasks.validation import certifiable_limits, check_certifiable_on
from shieldtune.tracking.run_info import job_run_name
from shieldtune.tracking.tracker import readable

REPO = Path(__file__).resolve().parents[1]
BC = REPO / "configs" / "breast-cancer-mlp.yaml"


def test_a_spec_the_real_split_sizes_can_never_certify_is_refused_naming_the_limit():
    """Issue: the static check used safety.eval_samples_max (1000), not the real split; with
    44 validation samples fgsm_robust_acc >= 0.95 cannot be certified even at 44/44."""
    job = Job.from_config(
        config_from_dict({"safety": {"constraints": ["fgsm_robust_acc >= 0.95"]}})
    )
    with pytest.raises(ConfigError) as err:
        check_certifiable_on(job.config.safety, job.constraints, n_val=44, n_test=2000)
    message = str(err.value)
    assert "\n" not in message and "44 validation samples" in message
    limit = certifiable_limits(job.config.safety, job.constraints, 44, 2000)[0]["validation"]
    assert 0.93 < limit < 0.95 and f"{limit:.4f}" in message
    check_certifiable_on(job.config.safety, job.constraints, n_val=2000, n_test=2000)


def test_tune_refuses_an_uncertifiable_spec_on_the_loaded_splits_before_training(tmp_path, capsys):
    code = main(
        [
            "tune",
            "--config",
            str(BC),
            "--set",
            "safety.constraints=[fgsm_robust_acc >= 0.98]",
            "--set",
            "tracking.enabled=false",
            "--set",
            f"tuner.output_dir={tmp_path}",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and "114 validation samples" in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing trained, no run folder


def test_task_check_prints_the_most_demanding_certifiable_threshold(capsys):
    assert main(["task-check", "--config", str(BC)]) == 0
    out = capsys.readouterr().out
    assert "the most demanding threshold these splits can certify is 0.9741 on 114" in out


def test_tune_exits_1_when_no_certified_safe_model_is_found(tmp_path):
    """Issue: tune exited 0 although nothing was certified (the pipeline exits 1)."""
    from .conftest import tiny_cli_args

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "shieldtune",
            "tune",
            *tiny_cli_args(
                "safety.constraints=[fgsm_robust_acc >= 0.97]",
                "tracking.enabled=false",
                f"tuner.output_dir={tmp_path}",
                "tuner.episodes=1",
            ),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 1, out.stderr[-2000:]
    assert "no certified-safe model was found" in out.stdout


def test_python_dash_m_shieldtune_is_the_command():
    out = subprocess.run(
        [sys.executable, "-m", "shieldtune", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and out.stdout.startswith("shieldtune ")


def test_run_names_use_the_tasks_name_not_its_factorys():
    """Issue: a plug-in named by ``pkg.mod:make_task`` gave runs ``tune-make_task-...``."""
    job = Job.from_config(config_from_dict({"task": {"entry_point": "breast-cancer"}}))
    assert job_run_name(job).startswith(f"tune-{job.task.name}-")


@pytest.mark.parametrize(
    ("noisy", "shown"), [(0.7595000000000001, 0.7595), (0.039999999999999925, 0.04), (3.0, 3.0)]
)
def test_logged_values_keep_their_precision_not_float_noise(noisy, shown):
    assert readable(noisy) == shown


def test_threads_default_to_half_the_cores_at_most_four_unless_the_user_says(monkeypatch):
    """Issue: torch's default (every core) made a job on a loaded 2-core machine 2.7x slower
    than OMP_NUM_THREADS=1, with the same results."""
    import torch

    from shieldtune.training.device import apply_threads, auto_threads

    assert [auto_threads(n) for n in (1, 2, 4, 16)] == [1, 1, 2, 4]
    before = torch.get_num_threads()
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert apply_threads(None) == auto_threads() == torch.get_num_threads()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert apply_threads(None) == 2
        assert apply_threads(3) == 3 == torch.get_num_threads()  # training.threads wins
    finally:
        torch.set_num_threads(before)


#: `section.key: value` quotes that are not the default by design (what the quote describes).
NOT_DEFAULTS = {
    ("cluster.md", "tuner.executor: kubernetes"),  # the cluster ConfigMap's own config.yaml
    ("population.md", "tuner.num_envs: N > 1"),  # a condition, not a value
    ("tasks.md", "training.device: auto | cpu | cuda | cuda:N"),  # the choices
    ("architecture.md", "section.key: value"),  # the convention itself
}


def test_every_default_the_docs_quote_is_the_real_default():
    """README said `tuner.warm_start: default` while the default was null. The docs quote a
    default as `section.key: value` (a setting a user picks as `section.key=value`)."""
    import re

    import yaml

    from shieldtune.config import config_from_dict

    defaults = config_from_dict({}).to_dict()
    pages = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    quoted = 0
    for page in pages:
        for section, key, text in re.findall(r"`([a-z_]+)\.([a-z_]+): ([^`]+)`", page.read_text()):
            if (page.name, f"{section}.{key}: {text}") in NOT_DEFAULTS:
                continue
            assert section in defaults and key in defaults[section], f"{page.name}: {section}.{key}"
            assert yaml.safe_load(text) == defaults[section][key], (
                f"{page.name} quotes `{section}.{key}: {text}` but the default is "
                f"{defaults[section][key]!r}"
            )
            quoted += 1
    assert quoted >= 3  # the pages do quote defaults (tuner.episodes, tuner.warm_start, ...)


def test_the_generated_config_reference_has_every_key_with_its_real_default_and_a_description():
    """The docs site's configuration reference is generated from the schema, so it cannot
    drift: every key of every section, with the default a config gets when it omits it."""
    import importlib.util

    from shieldtune.config import config_from_dict

    spec = importlib.util.spec_from_file_location(
        "gen_config_reference", REPO / "docs" / "gen_config_reference.py"
    )
    gen = importlib.util.module_from_spec(spec)
    sys.modules["gen_config_reference"] = gen  # its dataclasses look their module up
    spec.loader.exec_module(gen)
    rows = {row.key: row for row in gen.reference_rows()}
    defaults = config_from_dict({}).to_dict()
    for section, values in defaults.items():
        for key, value in values.items():
            row = rows[f"{section}.{key}"]
            assert row.default == value, row.key
            assert row.description.strip(), f"{row.key} has no description in config.py"
    page = gen.render()
    assert all(f"`{key}`" in page for key in rows)

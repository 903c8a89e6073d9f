"""The task contract: built-in tasks, plug-ins by import string, the checker and its one-line
errors, the DataLoader path, task metrics and hyperparameters, devices."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import Dataset

from shieldtune.cli import main
from shieldtune.config import DataConfig, TaskConfig, config_from_dict
from shieldtune.errors import ConfigError, TaskError
from shieldtune.job import Job
from shieldtune.tasks import TaskData, TensorSplit
from shieldtune.tasks.checker import check_task, load_task_data
from shieldtune.tasks.registry import BUILTIN_TASKS, make_task
from shieldtune.training.device import resolve_device
from shieldtune.training.step import StepRequest

from .conftest import tiny_dict


def one_line_exit_2(argv: list[str], capsys) -> str:
    """Run the CLI; it must refuse with exit 2 and exactly one error line, no traceback."""
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("shieldtune: error: "), err
    return lines[0]


# ----------------------------------------------------------------- built-in tasks


@pytest.mark.parametrize(
    ("entry_point", "kwargs", "data"),
    [
        ("mnist-cnn", {"conv1_channels": 4}, {"train_size": 300, "val_size": 100}),
        ("breast-cancer", {"model": "mlp"}, {}),
        ("breast-cancer", {"model": "linear"}, {}),
        ("japanese-vowels", {}, {}),
    ],
)
def test_every_builtin_task_passes_the_task_checker(entry_point, kwargs, data):
    task = make_task(TaskConfig(entry_point, kwargs))
    lines = check_task(task, DataConfig(**data))
    assert any(line.startswith("training:") for line in lines)
    assert any(line.startswith("input domain: sample inputs inside it") for line in lines)


def test_builtin_task_names_resolve_and_name_their_registered_model():
    assert set(BUILTIN_TASKS) == {"mnist-cnn", "breast-cancer", "japanese-vowels"}
    cfg = config_from_dict(
        {"task": {"entry_point": "breast-cancer", "kwargs": {"model": "linear"}}}
    )
    assert Job.from_config(cfg).registered_model_name == "shieldtune-breast-cancer-linear"
    assert Job.from_config(config_from_dict({})).registered_model_name == "shieldtune-mnist-cnn"


def test_tabular_features_are_standardised_on_the_training_split_only():
    task = make_task(TaskConfig("breast-cancer", {"model": "mlp"}))
    data = task.load_data(DataConfig())
    assert torch.allclose(data.train.x.mean(0), torch.zeros(30), atol=1e-5)
    assert not torch.allclose(data.test.x.mean(0), torch.zeros(30), atol=1e-3)
    # Physical lower bounds: no feature can go below the standardised value of 0.
    low = data.input_domain.low
    assert bool((data.train.x >= low).all() and (data.test.x >= low).all())
    assert (len(data.train), len(data.val), len(data.test)) == (341, 114, 114)


def test_speech_task_reads_all_utterances_of_the_nine_speakers():
    task = make_task(TaskConfig("japanese-vowels", {}))
    data = task.load_data(DataConfig())
    assert data.train.x.shape[1:] == (12, 16)
    labels = torch.cat([data.train.y, data.val.y, data.test.y])
    assert len(labels) == 640 and set(labels.tolist()) == set(range(9))


# ----------------------------------------------------------------- one-line errors


@pytest.mark.parametrize(
    ("entry_point", "fragment"),
    [
        ("no_such_pkg.tasks:make_task", "cannot be imported"),
        ("tests.task_plugins:no_such_factory", "has no attribute 'no_such_factory'"),
        ("tests.task_plugins:not_a_task", "returned dict, not a shieldtune.tasks.Task"),
        ("tests.task_plugins:broken_factory", "RuntimeError: the factory itself is broken"),
        ("not-a-builtin", "neither a built-in task"),
    ],
)
def test_a_task_that_cannot_be_built_is_one_line_at_config_time(entry_point, fragment, capsys):
    line = one_line_exit_2(["tune", "--set", f"task.entry_point={entry_point}"], capsys)
    assert fragment in line


def test_kwargs_the_factory_does_not_take_are_one_line(capsys):
    line = one_line_exit_2(["tune", "--set", "task.kwargs={no_such_kwarg: 1}"], capsys)
    assert "does not accept task.kwargs ['no_such_kwarg']" in line


@pytest.mark.parametrize(
    ("factory", "fragment"),
    [
        ("wrong_output", "output (2, 5); expected (2, 3) = (batch, num_classes)"),
        ("float_labels", "labels of dtype torch.float32"),
    ],
)
def test_a_task_breaking_the_contract_stops_before_any_training(
    factory, fragment, tmp_path, monkeypatch, capsys
):
    trained = []
    monkeypatch.setattr("shieldtune.training.step.train_segment", lambda *a, **k: trained.append(1))
    args = ["tune", "--set", f"task.entry_point=tests.task_plugins:{factory}"]
    args += ["--set", f"tuner.output_dir={tmp_path}", "--set", "tracking.enabled=false"]
    line = one_line_exit_2(args, capsys)
    assert fragment in line and trained == []


def test_a_constraint_on_a_metric_the_task_lacks_is_refused(capsys):
    line = one_line_exit_2(["tune", "--set", "safety.constraints=[ece <= 0.1]"], capsys)
    assert "unknown metric 'ece'" in line


def test_attacks_on_a_task_without_an_input_domain_are_refused(capsys):
    line = one_line_exit_2(["tune", "--set", "task.entry_point=tests.task_plugins:tokens"], capsys)
    assert "names fgsm_robust_acc, but task 'tokens' is not attackable" in line


def test_a_search_space_naming_a_hyperparameter_the_task_lacks_is_refused(capsys):
    space = "env.search_space=[{name: dropout, init: 0.1, low: 0.0, high: 0.5, scale: linear}]"
    line = one_line_exit_2(["tune", "--set", space], capsys)
    assert "'dropout' is not a hyperparameter of task 'mnist-cnn'" in line


def test_a_device_that_does_not_exist_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = ["tune", "--set", "training.device=cuda:0", "--set", f"tuner.output_dir={tmp_path}"]
    line = one_line_exit_2([*args, "--set", "tracking.enabled=false"], capsys)
    assert "training.device=cuda:0 but torch sees no GPU" in line


# ----------------------------------------------------------------- plug-ins at work


def test_a_task_that_is_not_attackable_tunes_on_token_ids(tmp_path):
    from shieldtune.control.tuner import run_tuning

    cfg = config_from_dict(
        tiny_dict(
            task={"entry_point": "tests.task_plugins:tokens", "kwargs": {}},
            safety={"constraints": ["mia_advantage <= 0.5"]},
            training={"segment_samples": 200},
            env={"steps_per_episode": 3, "search_space": [{"name": "learning_rate"}]},
            tracking={"enabled": False},
            tuner={"episodes": 1, "output_dir": str(tmp_path)},
        )
    )
    summary = run_tuning(cfg)
    assert summary.steps_run == cfg.env.steps_per_episode
    assert summary.test_metrics is not None and "fgsm_robust_acc" not in summary.test_metrics


def test_task_hyperparameters_are_fixed_from_config_and_applied_every_step(monkeypatch):
    from shieldtune.training import step
    from shieldtune.training.hyperparameters import apply_to_model, fixed_hyperparameters

    cfg = config_from_dict(
        {
            "task": {"entry_point": "breast-cancer", "kwargs": {"model": "mlp"}},
            "training": {"segment_samples": 200, "task_hyperparameters": {"dropout": 0.5}},
        }
    )
    runner = Job.from_config(cfg).steps.runner()
    hp = fixed_hyperparameters(cfg.training, runner.task)
    assert hp["dropout"] == 0.5
    applied = []

    def spy(task, model, values):
        apply_to_model(task, model, values)
        applied.append([m.p for m in model.modules() if isinstance(m, torch.nn.Dropout)])

    monkeypatch.setattr(step, "apply_to_model", spy)
    result = runner.run(StepRequest(None, hp, 100, 0))
    assert applied == [[0.5, 0.5]]
    assert {"val_acc", "fgsm_robust_acc", "certified", "train_loss"} <= set(result.metrics)


def test_a_plugin_metric_is_measured_per_step_and_judged_by_the_spec():
    cfg = config_from_dict(
        {
            "task": {"entry_point": "digits_task:make_task", "kwargs": {"channels": 4}},
            "safety": {"constraints": ["ece <= 0.0001"], "eval_samples": 50},
        }
    )
    runner = Job.from_config(cfg).steps.runner()
    hp = {"learning_rate": 0.05, "batch_size": 32, "weight_decay": 0.0, "momentum": 0.9}
    result = runner.run(StepRequest(None, {**hp, "adv_mix": 0.0, "label_smoothing": 0.1}, 256, 0))
    ece = result.metrics["ece"]
    assert 0.0 < ece < 1.0
    assert runner.suite.cost(result.metrics) == pytest.approx(ece - 0.0001)


class _Streamed(Dataset):
    """The same samples as a TensorSplit, served one at a time (the DataLoader path)."""

    def __init__(self, split: TensorSplit) -> None:
        self.split = split

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int):
        return self.split.x[i], self.split.y[i]


def test_a_streamed_dataset_trains_and_evaluates_exactly_like_in_memory_tensors(
    tiny_config, tiny_data
):
    streamed = TaskData(*(_Streamed(s) for s in (tiny_data.train, tiny_data.val, tiny_data.test)))
    fast = Job.from_config(tiny_config).steps.runner(tiny_data)
    slow = Job.from_config(tiny_config).steps.runner(streamed)
    hp = {"learning_rate": 0.05, "batch_size": 64, "weight_decay": 0.0, "momentum": 0.9}
    request = StepRequest(None, {**hp, "adv_mix": 0.25}, 600, 7)
    a, b = fast.run(request), slow.run(request)
    assert a.metrics == {**b.metrics, "train_loss": a.metrics["train_loss"]}
    assert abs(a.metrics["train_loss"] - b.metrics["train_loss"]) < 1e-6
    for key, value in a.state.model.items():
        assert torch.allclose(value, b.state.model[key], atol=1e-6), key


def test_load_task_data_refuses_what_is_not_a_dataset():
    class NotData:
        pass

    task = make_task(TaskConfig("tests.task_plugins:fine_features", {}))
    original = task.load_data
    task.load_data = lambda cfg: TaskData(NotData(), NotData(), NotData())  # type: ignore[assignment]
    try:
        with pytest.raises(TaskError, match=r"not a torch\.utils\.data\.Dataset"):
            load_task_data(task, DataConfig())
    finally:
        task.load_data = original  # type: ignore[assignment]


# ----------------------------------------------------------------- devices


def test_auto_device_is_the_cpu_without_a_gpu_and_cuda_is_checked(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="sees no GPU"):
        resolve_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda:0")
    assert resolve_device("cuda") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="has 1 GPU"):
        resolve_device("cuda:3")


def test_a_gpu_step_on_kubernetes_needs_a_gpu_request():
    with pytest.raises(ConfigError, match=r"kubernetes\.gpus"):
        config_from_dict({"tuner": {"executor": "kubernetes"}, "training": {"device": "cuda"}})
    cfg = config_from_dict(
        {
            "tuner": {"executor": "kubernetes"},
            "training": {"device": "cuda"},
            "kubernetes": {"gpus": 1},
        }
    )
    assert cfg.training.device == "cuda"


def test_prepare_data_passes_large_data_by_reference_and_later_stages_reload_it(
    tmp_path, monkeypatch
):
    from shieldtune.pipeline import stages

    cfg = Job.from_config(config_from_dict({"task": {"entry_point": "breast-cancer"}}))
    inline = stages.prepare_data(cfg, tmp_path / "small")
    assert inline["storage"] == "inline" and (tmp_path / "small" / "splits.pt").exists()
    monkeypatch.setattr(stages, "INLINE_LIMIT_BYTES", 0)
    ref = stages.prepare_data(cfg, tmp_path / "large")
    assert ref["storage"] == "reference" and not (tmp_path / "large" / "splits.pt").exists()
    a, b = (
        stages.load_prepared(tmp_path / "small", cfg),
        stages.load_prepared(tmp_path / "large", cfg),
    )
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(a, name).x, getattr(b, name).x)
    assert torch.equal(a.input_domain.low, b.input_domain.low)
    assert a.transform.to_dict() == b.transform.to_dict()  # it reaches register_model
    other = Job.from_config(config_from_dict({}))
    with pytest.raises(ConfigError, match="prepared dataset is for task 'breast-cancer'"):
        stages.load_prepared(tmp_path / "small", other)

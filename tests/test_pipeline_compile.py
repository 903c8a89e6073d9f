"""Compiled KFP YAML: in sync with the code, loadable by kfp, configured as promised, no secrets."""

import re
from pathlib import Path

import pytest
import yaml
from kfp import components

from shieldtune.pipeline.pipelines import COMPONENT_NAMES, compile_all

REPO = Path(__file__).resolve().parents[1]
CHECKED_IN = (
    [REPO / "pipelines" / f"{n}.yaml" for n in ("tuning_pipeline", "retune_pipeline")]
    + [REPO / "components" / n / "component.yaml" for n in COMPONENT_NAMES]
    + [REPO / "components" / "README.md"]
)


@pytest.fixture(scope="module")
def fresh(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compiled")
    compile_all(out)
    return out


@pytest.mark.parametrize("path", CHECKED_IN, ids=lambda p: str(p.relative_to(REPO)))
def test_checked_in_yaml_is_identical_to_a_fresh_compile(path, fresh):
    regenerated = fresh / path.relative_to(REPO)
    assert path.read_text() == regenerated.read_text(), (
        f"{path.relative_to(REPO)} is stale: run `shieldtune pipeline compile` and commit"
    )


@pytest.mark.parametrize("name", COMPONENT_NAMES)
def test_components_load_with_kfps_own_loader(name):
    component = components.load_component_from_file(
        str(REPO / "components" / name / "component.yaml")
    )
    assert component.name == name.replace("_", "-")


def _documents(name: str) -> list[dict]:
    """A compiled pipeline: the pipeline spec, then the Kubernetes platform spec."""
    return list(yaml.safe_load_all((REPO / "pipelines" / f"{name}.yaml").read_text()))


def _pipeline(name: str) -> dict:
    return _documents(name)[0]


def _tasks(spec: dict) -> dict[str, dict]:
    """Every task in the DAG, including those nested in dsl.If/Else sub-DAGs."""
    found = dict(spec["root"]["dag"]["tasks"])
    for comp in spec["components"].values():
        found.update(comp.get("dag", {}).get("tasks", {}))
    return found


@pytest.mark.parametrize("name", ["tuning_pipeline", "retune_pipeline"])
def test_caching_only_for_data_prep_and_only_tasks_with_transient_faults_retry(name):
    """Issue: a user error in prepare_data was retried twice (30 s, 60 s) like a transient
    fault. User errors now surface in check_inputs, and no_feasible_schedule is final: neither
    retries; the others retry (MLflow, the cluster, a pod eviction)."""
    tasks = _tasks(_pipeline(name))
    names = {t["componentRef"]["name"].removeprefix("comp-") for t in tasks.values()}
    assert names >= {
        "check-inputs",
        "prepare-data",
        "tune",
        "no-feasible-schedule",
        "train-final",
        "evaluate-safety",
        "register-model",
    }
    for task_name, task in tasks.items():
        if task_name.startswith("condition"):
            continue
        cached = task.get("cachingOptions", {}).get("enableCache", False)
        assert cached == (task_name == "prepare-data"), task_name
        if task_name in ("check-inputs", "no-feasible-schedule"):
            assert "retryPolicy" not in task, task_name
        else:
            assert task["retryPolicy"]["maxRetryCount"] == 2, task_name


@pytest.mark.parametrize("name", ["tuning_pipeline", "retune_pipeline"])
def test_resources_are_set_per_task_and_mlflow_is_required_where_tasks_log(name):
    """Issue: the shieldtune-mlflow Secret was optional, so a pod without it logged into
    sqlite on its own disk and lost the results. MLFLOW_TRACKING_URI is now required."""
    spec = _pipeline(name)
    docs = _documents(name)
    executors = spec["deploymentSpec"]["executors"]
    for exec_name, ex in executors.items():
        res = ex["container"]["resources"]
        assert res["cpuRequest"] and res["memoryRequest"] and res["cpuLimit"], exec_name
        assert ex["container"]["image"] == "shieldtune:0.1.0-cpu"
    platform = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for exec_name in executors:
        if exec_name in ("exec-check-inputs", "exec-prepare-data"):
            assert "secretAsEnv" not in platform[exec_name], exec_name
            continue
        refs = {
            k["envVar"]: s.get("optional", False)
            for s in platform[exec_name]["secretAsEnv"]
            for k in s["keyToEnv"]
            if s["secretName"] == "shieldtune-mlflow"
        }
        assert refs == {
            "MLFLOW_TRACKING_URI": False,
            "MLFLOW_TRACKING_USERNAME": True,
            "MLFLOW_TRACKING_PASSWORD": True,
        }, exec_name


@pytest.mark.parametrize("name", ["tuning_pipeline", "retune_pipeline"])
def test_tune_task_knows_its_pod_and_kfp_run_for_step_job_labels_and_owner(name):
    platform = _documents(name)[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {(e["name"], e["fieldPath"]) for e in platform["exec-tune"]["fieldPathAsEnv"]} == {
        ("SHIELDTUNE_POD_NAME", "metadata.name"),
        ("SHIELDTUNE_POD_UID", "metadata.uid"),
    }
    tasks = _pipeline(name)["root"]["dag"]["tasks"]
    run_id = tasks["tune"]["inputs"]["parameters"]["kfp_run_id"]
    assert run_id["runtimeValue"]["constant"] == "{{$.pipeline_job_uuid}}"


def test_retune_pipeline_warm_starts_from_the_champion_of_the_configured_task():
    params = _pipeline("retune_pipeline")["root"]["inputDefinitions"]["parameters"]
    # Empty: the champion of the config's registered model (shieldtune-<task> by default).
    assert params["champion_model_uri"]["defaultValue"] == ""
    retune = _pipeline("retune_pipeline")["root"]["dag"]["tasks"]["tune"]["inputs"]["parameters"]
    assert retune["warm_start"]["runtimeValue"]["constant"] is True
    tuning = _pipeline("tuning_pipeline")
    assert "champion_model_uri" not in tuning["root"]["inputDefinitions"]["parameters"]
    cold = tuning["root"]["dag"]["tasks"]["tune"]["inputs"]["parameters"]
    assert cold["warm_start"]["runtimeValue"]["constant"] is False


def test_pipelines_take_the_task_and_the_data_location_as_parameters():
    for name in ("tuning_pipeline", "retune_pipeline"):
        params = _pipeline(name)["root"]["inputDefinitions"]["parameters"]
        for key in ("task_entry_point", "task_kwargs_json", "data_root"):
            assert params[key]["defaultValue"] == "", (name, key)
        tasks = _pipeline(name)["root"]["dag"]["tasks"]
        check = tasks["check-inputs"]["inputs"]["parameters"]
        assert check["task_entry_point"]["componentInputParameter"] == "task_entry_point"
        # Every later stage reads the config check_inputs resolved.
        for later in ("prepare-data", "tune"):
            given = tasks[later]["inputs"]["parameters"]["config_json"]
            assert given["taskOutputParameter"]["producerTask"] == "check-inputs", later


def test_safety_gate_and_promotion_are_decided_in_register_model_and_infeasible_fails():
    spec = _pipeline("tuning_pipeline")
    placed = {}
    for comp_name, comp in spec["components"].items():
        for task in comp.get("dag", {}).get("tasks", {}).values():
            placed[task["componentRef"]["name"]] = comp_name
    assert placed["comp-register-model"] == "comp-condition-2"
    assert placed["comp-no-feasible-schedule"] == "comp-condition-3"
    branches = spec["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    conditions = {name: t["triggerPolicy"]["condition"] for name, t in branches.items()}
    assert "tune" in conditions["condition-2"] and "== true" in conditions["condition-2"]
    assert "!(" in conditions["condition-3"]


def test_component_inputs_carry_descriptions():
    """Issue: the reusable components carried no description of their inputs."""
    for name in COMPONENT_NAMES:
        spec = yaml.safe_load((REPO / "components" / name / "component.yaml").read_text())
        params = spec["root"]["inputDefinitions"].get("parameters", {})
        artifacts = spec["root"]["inputDefinitions"].get("artifacts", {})
        for key, item in {**params, **artifacts}.items():
            assert item.get("description"), (name, key)


SECRET_PATTERNS = [
    re.compile(
        r"(?i)(password|passwd|secret_key|api[_-]?key|token)\s*[:=]\s*['\"]?[A-Za-z0-9/+_\-]{8,}"
    ),
    re.compile(r"AKIA[0-9A-Z]{16}"),
    re.compile(r"(?i)bearer\s+[A-Za-z0-9\-._~+/]{10,}"),
    re.compile(r"https?://[^/\s:@]+:[^/\s@]+@"),
]


@pytest.mark.parametrize("path", CHECKED_IN, ids=lambda p: str(p.relative_to(REPO)))
def test_compiled_yaml_holds_no_credentials(path):
    text = path.read_text()
    for pattern in SECRET_PATTERNS:
        assert not pattern.search(text), (path, pattern.pattern)


def test_count_and_executor_parameters_default_to_the_config_json_values():
    """Issue: the tune task's explicit parameters (defaults 6, 8, 1, "local") overrode
    config_json, so e.g. an executor or episode count set there never reached the task."""
    from shieldtune.pipeline.stages import pipeline_config

    keys = ("episodes", "steps_per_episode", "num_envs", "executor")
    for name in ("tuning_pipeline", "retune_pipeline"):
        params = _pipeline(name)["root"]["inputDefinitions"]["parameters"]
        assert [params[k]["defaultValue"] for k in keys] == [0, 0, 0, ""]  # "as in config_json"
        # Issue: integer defaults rendered as "6.0"; they are written as integers.
        text = (REPO / "pipelines" / f"{name}.yaml").read_text()
        assert "episodes: int [Default: 0]" in text
        assert not re.search(r"defaultValue: -?\d+\.0\n", text)
    given = '{"tuner": {"episodes": 3, "executor": "process", "num_envs": 2}}'
    unset = {
        "tuner.episodes": 0,
        "tuner.num_envs": 0,
        "tuner.executor": "",
        "env.steps_per_episode": 0,
    }
    tuner = pipeline_config(given, unset, keep_zero=False).config.tuner
    assert (tuner.episodes, tuner.executor, tuner.num_envs) == (3, "process", 2)
    tuner = pipeline_config(given, {**unset, "tuner.episodes": 5}, keep_zero=False).config.tuner
    assert tuner.episodes == 5

"""Credentials: MLflow and KFP credentials come only from Kubernetes Secrets or the environment,
never from YAML, parameters, tags or logs.

One credential scanner (regular expressions plus a short allowlist for references: Secret names,
key names, environment variable names) is applied to every manifest, step Job, compiled
pipeline, component and Dockerfile. With canary credentials in the environment, the Jobs the
real executor POSTs to the real Kubernetes API server (tests/cluster; the bodies as the API
server's audit log recorded them) and the step files it writes, a pipeline compilation, and what
a real tuning job logs to MLflow and prints hold none of them. Tests at the end plant
credentials (and references to them) to prove the scanner catches the first and lets the second
through.
"""

from __future__ import annotations

import base64
import json
import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from shieldtune.cli import main
from shieldtune.config import config_from_dict
from shieldtune.errors import StepFailedError
from shieldtune.executors.kubernetes.executor import KubernetesStepExecutor
from shieldtune.executors.step_files import DirStepStore
from shieldtune.job import Job
from shieldtune.pipeline import pipelines as kfp_pipelines
from shieldtune.training.step import StepRequest

from .conftest import tiny_cli_args, tiny_dict
from .security_helpers import (
    DOCKERFILES,
    PIPELINE_FILES,
    ROOT,
    SECRET_NAMES,
    STEP_JOB_CONFIGS,
    make_step_job,
    pod_security_gaps,
    pod_specs,
)
from .test_executors import HYPER
from .test_manifests import BASE, find, kustomize

MANIFEST_FILES = sorted((ROOT / "manifests").rglob("*.y*ml"))
COMPONENT_FILES = sorted((ROOT / "components").glob("*/component.yaml"))


# ================================================================ credential scanner
@dataclass(frozen=True)
class Finding:
    where: str
    rule: str
    text: str

    def __str__(self) -> str:
        return f"{self.where}: {self.rule}: {self.text[:80]!r}"


#: Credential formats, recognised wherever they appear.
CREDENTIAL_PATTERNS = {
    "aws-access-key-id": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "private-key-block": re.compile(r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----"),
    "url-with-password": re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s/:@'\"]+:[^\s/@'\"]+@[^\s/'\"]"),
    "bearer-token": re.compile(r"(?i)\bbearer\s+[A-Za-z0-9\-._~+/]{16,}=*"),
    "basic-auth-header": re.compile(r"(?i)\bbasic\s+[A-Za-z0-9+/]{16,}={0,2}(?![\w+/=])"),
    "github-token": re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{36,}|github_pat_\w{22,})"),
    "slack-token": re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"),
    "jwt": re.compile(r"\beyJ[\w-]{8,}\.eyJ[\w-]{8,}\.[\w-]{8,}"),
}
#: ``key: value`` / ``key=value`` / ``"key": "value"`` where the key names a credential.
ASSIGNMENT = re.compile(
    r"(?i)(?P<key>[\w.-]*(?:passw(?:or)?d|pwd|secret|token|api[_-]?key|access[_-]?key"
    r"|private[_-]?key|credentials?)[\w.-]*)[\"']?[ \t]*(?:=|:(?=[ \t]|$))[ \t]*"
    r"(?P<value>\"[^\"\n]*\"|'[^'\n]*'|<[^<>\n]*>|[^\s,;}\])#]+)",
    re.MULTILINE,
)
# ---- the allowlist: references to credentials, never their values
#: Keys whose value names a Secret or a key inside one.
REFERENCE_KEYS = {"secretname", "secretkey", "secretref", "secretkeyref", "mlflow_secret"}
#: Environment variable names (as values: `secretKey: MLFLOW_TRACKING_PASSWORD`).
ENV_NAME = re.compile(r"(?:MLFLOW|KFP|AWS|SHIELDTUNE)_[A-Z0-9_]+")
OBJECT_NAME = re.compile(r"[A-Za-z0-9](?:[-A-Za-z0-9_.]*[A-Za-z0-9])?")
PLACEHOLDER = re.compile(r"<[^<>]*>|\$\{?\w+\}?|\{\{.*\}\}|\*+|\.\.\.|true|false|null|none|~")


def _is_reference(key: str, value: str) -> bool:
    value = value.strip("\"'")
    if not value or value in SECRET_NAMES or ENV_NAME.fullmatch(value):
        return True
    if value.startswith(("{", "[")):  # a flow mapping/list: its own keys are scanned
        return True
    if PLACEHOLDER.fullmatch(value.lower()):
        return True
    return key.rsplit(".", 1)[-1].lower() in REFERENCE_KEYS and bool(OBJECT_NAME.fullmatch(value))


def credential_findings(text: str, where: str) -> list[Finding]:
    """Everything in ``text`` that looks like a credential value."""
    found = [
        Finding(where, rule, m.group(0))
        for rule, pattern in CREDENTIAL_PATTERNS.items()
        for m in pattern.finditer(text)
    ]
    found += [
        Finding(where, "credential-assignment", m.group(0))
        for m in ASSIGNMENT.finditer(text)
        if not _is_reference(m.group("key"), m.group("value"))
    ]
    return found


def as_text(obj: Any) -> str:
    """A parsed object as YAML text (what the scanner reads): one ``key: value`` a line."""
    return yaml.safe_dump(obj, sort_keys=False, width=10**6)


def scan_files(paths: list[Path]) -> list[Finding]:
    assert paths, "nothing to scan"
    return [f for p in paths for f in credential_findings(p.read_text(), str(p.relative_to(ROOT)))]


# ======================================================================= manifests
def test_manifest_files_hold_no_credentials_not_even_in_comments():
    """Raw text, so comments and embedded documents (ConfigMap config.yaml) count too."""
    assert [str(f) for f in scan_files(MANIFEST_FILES)] == []


# ======================================================================= step Jobs
@pytest.mark.parametrize("kubernetes", STEP_JOB_CONFIGS.values(), ids=STEP_JOB_CONFIGS)
def test_generated_step_job_takes_mlflow_credentials_only_from_the_secret(kubernetes):
    job = make_step_job(kubernetes)
    assert [str(f) for f in credential_findings(as_text(job), "step Job")] == []
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["envFrom"] == [{"secretRef": {"name": "shieldtune-mlflow", "optional": True}}]
    literal = {e["name"] for e in container["env"] if "value" in e}
    assert not {n for n in literal if re.search(r"(?i)password|token|secret|username", n)}


@pytest.fixture
def canaries(monkeypatch) -> dict[str, str]:
    """Recognisable fake credentials in the environment, as a cluster would inject them."""
    tag = uuid.uuid4().hex[:12]
    values = {
        "MLFLOW_TRACKING_USERNAME": f"canary-user-{tag}",
        "MLFLOW_TRACKING_PASSWORD": f"canary-password-{tag}",
        "MLFLOW_TRACKING_TOKEN": f"canary-mlflow-token-{tag}",
        "KFP_BEARER_TOKEN": f"canary-kfp-token-{tag}",
    }
    for name, value in values.items():
        monkeypatch.setenv(name, value)
    return values


def leaked(canaries: dict[str, str], blob: str | bytes, *, username: bool = True) -> list[str]:
    """The canaries (also as an HTTP basic-auth pair) that occur in ``blob``."""
    user, password = canaries["MLFLOW_TRACKING_USERNAME"], canaries["MLFLOW_TRACKING_PASSWORD"]
    forms = {**canaries, "basic-auth": base64.b64encode(f"{user}:{password}".encode()).decode()}
    if not username:
        del forms["MLFLOW_TRACKING_USERNAME"]
    data = blob if isinstance(blob, bytes) else blob.encode()
    return [name for name, value in forms.items() if value.encode() in data]


@pytest.mark.cluster
@pytest.mark.parametrize(
    "transport, uri, passed_on",
    [
        ("mlflow", "http://shieldtune-mlflow:5000", True),
        ("mlflow", "https://{user}:{password}@mlflow.example.com", False),
        ("volume", "https://{user}:{password}@mlflow.example.com", False),
    ],
    ids=["mlflow-plain-uri", "mlflow-uri-with-password", "volume"],
)
def test_jobs_the_executor_posts_carry_no_credential_from_its_environment(
    tmp_path, monkeypatch, step_cluster, canaries, transport, uri, passed_on
):
    """The real executor against the real API server, with canaries in its environment: the
    Job body it sends (recorded by the API server's audit log) and the step files it writes
    hold none of them; a tracking URI is handed on only when it embeds no password.

    No pod may run here (its tracking URI names hosts that are not loopback): the step pods'
    ServiceAccount does not exist, so the Job controller cannot create one, and the Job fails
    on its 1 s activeDeadlineSeconds."""
    uri = uri.format(
        user=canaries["MLFLOW_TRACKING_USERNAME"], password=canaries["MLFLOW_TRACKING_PASSWORD"]
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    data = tiny_dict(
        tracking={"enabled": transport == "mlflow"},
        tuner={"executor": "kubernetes", "step_retries": 0},
        kubernetes={
            "namespace": step_cluster.namespace,
            "transport": transport,
            "volume_claim": "shieldtune-steps",
            "service_account": "no-such-account",
            "backoff_limit": 0,
            "active_deadline_seconds": 1,
            "poll_seconds": 0.2,
        },
    )
    cfg = config_from_dict(data)
    store = DirStepStore(tmp_path / "steps", uri_path="/shared/steps")
    (tmp_path / "steps").mkdir()
    executor = KubernetesStepExecutor(
        cfg.kubernetes,
        Job.from_config(cfg).steps,
        store,
        retries=cfg.tuner.step_retries,
        mlflow_run_id="0123abcd",
    )
    try:
        with pytest.raises(StepFailedError, match="DeadlineExceeded"):
            executor.run_many([StepRequest(None, HYPER, 300, seed=1)])
    finally:
        executor.close()
    [job] = step_cluster.created_jobs()
    assert not step_cluster.pods()
    assert leaked(canaries, json.dumps(job)) == []
    assert [str(f) for f in credential_findings(as_text(job), "posted Job")] == []
    [(_, spec)] = list(pod_specs(job))
    assert pod_security_gaps(spec) == []
    [container] = spec["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert (env.get("MLFLOW_TRACKING_URI") == uri) is passed_on
    assert container["envFrom"] == [{"secretRef": {"name": "shieldtune-mlflow", "optional": True}}]
    step_files = [p for p in (tmp_path / "steps").rglob("*") if p.is_file()]
    assert step_files, "the executor wrote no request file"
    assert [
        (p.name, found) for p in step_files if (found := leaked(canaries, p.read_bytes()))
    ] == []


# ================================================================= KFP pipelines
@pytest.mark.parametrize("path", PIPELINE_FILES, ids=lambda p: p.name)
def test_pipeline_tasks_get_credentials_only_from_the_secret_never_as_literals(path):
    spec = next(yaml.safe_load_all(path.read_text()))
    for name, executor in spec["deploymentSpec"]["executors"].items():
        for env in executor["container"].get("env", []):
            assert not re.search(r"(?i)password|token|secret|username", env["name"]), name
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert not [p for p in params if re.search(r"(?i)password|token|secret|credential", p)]


def test_compiled_pipelines_and_components_hold_no_credentials():
    assert [str(f) for f in scan_files(PIPELINE_FILES + COMPONENT_FILES)] == []


def test_compiling_with_credentials_in_the_environment_writes_none_of_them(tmp_path, canaries):
    kfp_pipelines.compile_all(tmp_path)
    written = [p for p in tmp_path.rglob("*.yaml")]
    assert len(written) == len(PIPELINE_FILES) + len(COMPONENT_FILES)
    assert [p.name for p in written if leaked(canaries, p.read_bytes())] == []


def test_dockerfiles_hold_no_credentials():
    assert [str(f) for f in scan_files(DOCKERFILES)] == []


# =========================================================== MLflow: a real tuning job
#: MLflow itself tags every run with MLFLOW_TRACKING_USERNAME when it is set
#: (mlflow.tracking.context.default_context): the identity the run is attributed to.
MLFLOW_USER_TAG = "mlflow.user"


def _everything_mlflow_holds(uri: str) -> Iterator[tuple[str, str]]:
    """(where, text) for every experiment, run, param, tag, metric name and registry
    entry in the store at ``uri``."""
    client = MlflowClient(uri)
    for exp in client.search_experiments(view_type=ViewType.ALL):
        yield f"experiment {exp.name}", as_text({"name": exp.name, "tags": exp.tags})
        for run in client.search_runs([exp.experiment_id], run_view_type=ViewType.ALL):
            where = f"run {run.info.run_name}"
            yield f"{where} params", as_text(run.data.params)
            tags = {k: v for k, v in run.data.tags.items() if k != MLFLOW_USER_TAG}
            yield f"{where} tags", as_text(tags)
            yield f"{where} tag {MLFLOW_USER_TAG}", run.data.tags.get(MLFLOW_USER_TAG, "")
            yield f"{where} metric names", "\n".join(run.data.metrics)
    for model in client.search_registered_models():
        yield f"model {model.name}", as_text({"tags": model.tags, "desc": model.description})
        for mv in client.search_model_versions(f"name='{model.name}'"):
            yield (
                f"model {model.name} v{mv.version}",
                as_text({"tags": mv.tags, "source": mv.source, "desc": mv.description}),
            )


def test_tuning_job_logs_and_prints_no_credential_from_its_environment(
    tmp_path, monkeypatch, canaries, capfd, caplog
):
    """A tiny real job (CLI, MLflow tracking into sqlite, model registration) with the
    MLflow and KFP credentials set as canaries: none reaches a param, tag, metric name,
    registry entry, output file, MLflow artifact, the store's bytes, stdout/stderr or a
    log record, even at DEBUG level. One exception, MLflow's own: the username (an
    identity, not a secret) is the run's ``mlflow.user`` tag, and so in the store."""
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    caplog.set_level(logging.DEBUG)
    out_dir = tmp_path / "runs"
    args = tiny_cli_args(
        "tuner.episodes=1",
        "env.steps_per_episode=2",
        f"tuner.output_dir={json.dumps(str(out_dir))}",
        "tracking.enabled=true",
        "tracking.experiment=security-scan",
        "tracking.registered_model_name=security-scan-model",
        "safety.constraints=[mia_advantage <= 0.9]",
    )
    assert main(["tune", *args]) == 0
    printed = capfd.readouterr()

    [run_dir] = [p for p in out_dir.iterdir() if p.is_dir()]
    for name in ("config.yaml", "summary.json", "steps.jsonl"):
        assert (run_dir / name).is_file(), f"the job wrote no {name}: nothing to scan"
    parent = json.loads((run_dir / "summary.json").read_text())["mlflow_run_id"]
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent)}
    assert {"config.yaml", "summary.json", "steps.jsonl"} <= logged

    tracked = list(_everything_mlflow_holds(uri))
    assert any("params" in where for where, _ in tracked) and any(
        where.startswith("model ") for where, _ in tracked
    ), "nothing logged to MLflow: the scan would pass vacuously"
    records = "\n".join(f"{r.name}: {r.getMessage()}" for r in caplog.records)
    texts = [*tracked, ("stdout", printed.out), ("stderr", printed.err), ("log records", records)]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    problems = [
        f"{where}: {found}"
        for where, text in texts
        # the username only where MLflow puts it on purpose
        if (found := leaked(canaries, text, username=not where.endswith(MLFLOW_USER_TAG)))
    ]
    problems += [
        f"{p.relative_to(tmp_path)}: {found}"
        for p in files
        if (found := leaked(canaries, p.read_bytes(), username=p.name != "mlflow.db"))
    ]
    problems += [str(f) for where, text in tracked for f in credential_findings(text, where)]
    assert problems == []
    assert (
        "best certified-safe state" in printed.out
    )  # the captured output is the job's real output


# ============================================================= the scanner catches things
@pytest.mark.parametrize(
    "planted",
    [
        "MLFLOW_TRACKING_PASSWORD=hunter22-prod",
        'password: "correct horse battery staple"',
        '"api_key": "sk_live_4eC39HqLyjWDarjtT1zdp7dc"',
        "tracking:\n  token: 3f9a0b7c55e1d2\n",
        "aws_access_key_id = AKIAIOSFODNN7EXAMPLE",
        "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA\n",
        "-----BEGIN OPENSSH PRIVATE KEY-----",
        "MLFLOW_TRACKING_URI: https://alice:s3cr3t@mlflow.example.com",
        "--host https://kfp.example.com --header 'Authorization: Bearer abcdef0123456789abcdef'",
        "Authorization: Basic YWxpY2U6czNjcjN0LXBhc3N3b3Jk",
        "token ghp_" + "a1B2c3D4e5F6g7H8i9J0" * 2,
        "slack: xoxb-123456789012-abcdefghijkl",
        "kfp_token: eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJzeXN0ZW0ifQ.c2lnbmF0dXJlLWJ5dGVz",
        "  secret_key: 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY'",
    ],
)
def test_credential_scan_catches_planted_credentials(planted):
    assert credential_findings(planted, "planted"), f"missed: {planted!r}"


@pytest.mark.parametrize(
    "reference",
    [
        "secretName: shieldtune-mlflow",
        "secretKey: MLFLOW_TRACKING_PASSWORD",
        "- secretRef: {name: shieldtune-mlflow, optional: true}",
        "secretKeyRef:\n  name: shieldtune-mlflow\n  key: MLFLOW_TRACKING_PASSWORD\n",
        "envVar: MLFLOW_TRACKING_PASSWORD",
        "MLFLOW_TRACKING_PASSWORD: <the password>",
        "token: ${KFP_BEARER_TOKEN}",
        "automountServiceAccountToken: false",
        "mlflow_secret: shieldtune-mlflow",
        "MLFLOW_TRACKING_URI: http://shieldtune-mlflow:5000",
        "url: https://mlflow.example.com/#/experiments",
    ],
)
def test_credential_scan_lets_references_to_credentials_through(reference):
    assert credential_findings(reference, "reference") == []


def test_credential_scan_finds_a_password_planted_in_a_manifest():
    """End to end on a real manifest: a literal env value slipped into the Deployment."""
    deployment = find(kustomize(BASE), "Deployment", "shieldtune-mlflow")
    text = as_text(deployment)
    assert credential_findings(text, "mlflow Deployment") == []
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container.setdefault("env", []).append({"name": "MLFLOW_TRACKING_PASSWORD", "value": "x"})
    container["env"].append({"name": "DB", "value": "postgresql://mlflow:pw123456@db:5432/m"})
    rules = {f.rule for f in credential_findings(as_text(deployment), "planted")}
    assert "url-with-password" in rules

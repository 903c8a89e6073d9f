"""The model registry: one version per run, and champion/challenger promotion.

Registration is idempotent: a retried pipeline task, or a job resumed after a
crash during its final phase, finds the version its run already registered
(by the ``source_run_id`` tag) instead of registering a second one.

Promotion moves ``@champion`` only to a challenger that passes the safety gate
(every constraint certified on the test split) and does at least as well as
the current champion on the primary metric (test accuracy), with the champion
re-evaluated on the challenger's test split under the challenger's spec, so
both numbers come from the same samples and the same attacks. Every decision
is recorded with its reason on the model version and in the model card.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from shieldtune.errors import CheckpointError, ShieldtuneError, first_line

CHAMPION_ALIAS = "champion"
#: What promotion compares (higher is better), measured on the test split.
PRIMARY_METRIC = "test_acc"
CHECKPOINT_FILE = "best_model.pt"


@dataclass(frozen=True)
class Promotion:
    """Whether the challenger becomes ``@champion``, and why, in one sentence."""

    promoted: bool
    reason: str
    #: The version that held ``@champion`` before (None: there was none).
    previous_champion: str | None = None
    #: The previous champion's test report on the challenger's split and spec.
    champion_report: dict[str, float] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def version_of_run(client: MlflowClient, name: str, run_id: str) -> str | None:
    """The version of ``name`` that run ``run_id`` already registered, if any."""
    try:
        versions = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise
    mine = [v for v in versions if run_id in (v.tags.get("source_run_id"), v.run_id)]
    return str(min(int(v.version) for v in mine)) if mine else None


def champion_version(client: MlflowClient, name: str) -> str | None:
    """The version ``@champion`` points at, or None if the model or the alias is absent."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION_ALIAS).version)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            return None
        if "not found" in str(exc).lower() or "does not exist" in str(exc).lower():
            return None
        raise


def download_checkpoint(uri: str, tracking_uri: str, into: Path | None = None) -> Path:
    """The ``best_model.pt`` a registered model carries (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``), downloaded from the store at ``tracking_uri``."""
    mlflow.set_tracking_uri(tracking_uri)
    try:
        local = Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=uri, dst_path=None if into is None else str(into)
            )
        )
    except MlflowException as exc:
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise  # the server failed: the caller's retry wrapper makes it one line
        missing = missing_artifacts(uri, tracking_uri)
        if missing is not None:  # the registry knows the version: its files are gone
            raise missing from None
        raise CheckpointError(f"cannot resolve {uri}: {first_line(exc)}") from None
    found = sorted(local.rglob(CHECKPOINT_FILE))
    if not found:
        missing = missing_artifacts(uri, tracking_uri) if not any(local.rglob("*")) else None
        if missing is not None:
            raise missing
        raise CheckpointError(
            f"{uri} carries no {CHECKPOINT_FILE}; it was not logged by shieldtune"
        )
    return found[0]


class MissingArtifactsError(CheckpointError):
    """A registered version whose files were deleted from the artifact store."""


def model_version(client: MlflowClient, uri: str) -> Any:
    """The registry's ModelVersion that ``uri`` (``models:/NAME@ALIAS`` or
    ``models:/NAME/VERSION``) names; MLflow's exception when there is none, ValueError for
    a URI of neither form."""
    rest = uri.removeprefix("models:/")
    if "@" in rest:
        name, alias = rest.split("@", 1)
        return client.get_model_version_by_alias(name, alias)
    name, number = rest.rsplit("/", 1)
    return client.get_model_version(name, number)


def missing_artifacts(uri: str, tracking_uri: str) -> MissingArtifactsError | None:
    """The error for ``uri`` (``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``) when the
    registry knows the version it names (so its files, not the store, are missing); None
    when it does not."""
    client = MlflowClient(tracking_uri)
    try:
        version = model_version(client, uri)
    except (MlflowException, ValueError):
        return None
    name = version.name
    where = version.source or "the artifact store"
    try:  # MLflow 3: the source is models:/<model id>; its files' place is the logged model's
        source = version.source or ""
        model_id = getattr(version, "model_id", None) or (
            source.removeprefix("models:/") if source.startswith("models:/m-") else None
        )
        if model_id:
            where = client.get_logged_model(model_id).artifact_location
    except (MlflowException, AttributeError):
        pass
    return MissingArtifactsError(
        f"{uri} is version {version.version} of registered model {name!r}, but that "
        f"version's artifacts are missing (deleted from {where}); register a new version "
        f"(shieldtune tune) or move the alias to a version whose artifacts exist"
    )


def decide_promotion(
    name: str,
    challenger: dict[str, float],
    champion: str | None,
    this_version: str,
    evaluate_champion: Callable[[Path], dict[str, float]],
    tracking_uri: str,
) -> Promotion:
    """Gate first, then the comparison with the current champion (see the module docstring).

    ``evaluate_champion`` runs the challenger's test report on a checkpoint file.
    """
    if not challenger.get("constraints_satisfied"):
        return Promotion(
            False,
            "the safety gate failed: not every constraint is certified on the test split",
            champion,
        )
    if champion is None:
        return Promotion(True, "passed the safety gate; there was no champion", None)
    if champion == this_version:
        return Promotion(True, "already the champion (this run registered it before)", champion)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = download_checkpoint(f"models:/{name}/{champion}", tracking_uri, Path(tmp))
            theirs = evaluate_champion(path)
        except ShieldtuneError as exc:
            return Promotion(
                True,
                f"passed the safety gate; champion v{champion} cannot be evaluated on this "
                f"test split ({first_line(exc)})",
                champion,
            )
    mine_value, their_value = challenger[PRIMARY_METRIC], theirs[PRIMARY_METRIC]
    if not theirs.get("constraints_satisfied"):
        return Promotion(
            True,
            f"passed the safety gate; champion v{champion} does not (re-evaluated on the same "
            f"test split and spec)",
            champion,
            theirs,
        )
    if mine_value >= their_value:
        return Promotion(
            True,
            f"passed the safety gate and {PRIMARY_METRIC} {mine_value:.4f} >= champion "
            f"v{champion}'s {their_value:.4f} on the same test split and spec",
            champion,
            theirs,
        )
    return Promotion(
        False,
        f"passed the safety gate, but champion v{champion} stays: its {PRIMARY_METRIC} "
        f"{their_value:.4f} > {mine_value:.4f} on the same test split and spec",
        champion,
        theirs,
    )

"""Saving and safely loading model checkpoints and controller policies.

Files are written atomically (temp file + rename) so a crash never leaves a
half-written checkpoint, and read with ``torch.load(weights_only=True)`` so a
tampered file cannot execute code: only tensors and plain containers load.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from shieldtune.errors import CheckpointError, StorageError, first_line, is_existing_file

MODEL_KIND = "shieldtune.model/v1"
POLICY_KIND = "shieldtune.policy/v1"


#: What every file of a kind must hold at its top level (checked after the weights-only
#: load): key -> accepted types. Readers register their kinds with :func:`register_kind`.
_SCHEMAS: dict[str, dict[str, tuple[type, ...]]] = {}
#: Integers in project files (seeds, counts) must fit the 64-bit generators that use them.
_MAX_INT = 2**63 - 1
CHECKSUM_SUFFIX = ".sha256"


def register_kind(kind: str, schema: dict[str, tuple[type, ...]]) -> str:
    """Declare the top-level keys (and their types) a file of ``kind`` must hold."""
    _SCHEMAS[kind] = schema
    return kind


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def _write(data: bytes, path: Path) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> Path:
    """Write ``obj`` with torch.save, atomically (temp file + rename), with a checksum.

    The SHA-256 of the bytes goes to ``<path>.sha256``, with the digest of the version on
    disk now (the sidecar is replaced just before the file, so a crash between the two
    leaves a file whose digest is still listed, however many such crashes come in a row:
    the previous digest is the file's own, never a listed one that may name a version that
    was never written). :func:`safe_load` refuses a file whose digest is not listed.
    Disk and path errors are one-line :class:`StorageError`s naming the path.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    sidecar = _sidecar(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        previous = _digest_on_disk(path, sidecar)
        _write(json.dumps({"sha256": [digest, *previous]}).encode(), sidecar)
        _write(data, path)
    except OSError as exc:
        raise StorageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file, fsync, rename): a reader, or a crash,
    sees the old file or the whole new one, never an empty or partial one."""
    path = Path(path)
    try:
        _write(text.encode(), path)
    except OSError as exc:
        raise StorageError(f"cannot write {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _digest_on_disk(path: Path, sidecar: Path) -> list[str]:
    """The digest of the file at ``path`` as it is now, if its sidecar vouches for it (a
    damaged file must not be listed as good); empty when there is none."""
    listed = _digests(sidecar)
    if not listed:
        return []
    try:
        with open(path, "rb") as fh:
            digest = hashlib.file_digest(fh, "sha256").hexdigest()
    except FileNotFoundError:
        return []
    return [digest] if digest in listed else []


def _digests(sidecar: Path) -> list[str]:
    try:
        listed = json.loads(sidecar.read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [d for d in listed if isinstance(d, str)] if isinstance(listed, list) else []


def _check_schema(path: Path, kind: str, obj: dict[str, Any]) -> None:
    for key, types in _SCHEMAS.get(kind, {}).items():
        if key not in obj:
            raise CheckpointError(
                f"{str(path)!r} is an incomplete {kind} file: it has no {key!r}; it is damaged "
                "or was written by another version"
            )
        value = obj[key]
        if not isinstance(value, types):
            raise CheckpointError(
                f"{str(path)!r}: {key!r} is a {type(value).__name__}, not what a {kind} file "
                "holds; the file is damaged or was written by another version"
            )
        if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _MAX_INT:
            raise CheckpointError(f"{str(path)!r}: {key!r} = {value} is out of range")


def safe_load(path: str | Path, kind: str) -> dict[str, Any]:
    """Load a file written by :func:`atomic_save`: weights-only, checksum, kind and structure.

    Every way the file can be wrong (missing, unreadable, not a weights-only file, bytes
    changed since it was written, another kind, missing keys) is one
    :class:`CheckpointError` line.
    """
    path = Path(path)
    if not is_existing_file(path):
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    sidecar = _sidecar(path)
    if sidecar.exists():
        try:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
        except OSError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({exc})") from None
        if digest not in _digests(sidecar):
            raise CheckpointError(
                f"checkpoint {str(path)!r} does not match its checksum ({sidecar.name}): the "
                "file was changed or damaged after it was written"
            )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # the unpickler raises many types on hostile bytes
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupted or not a safe weights-only file "
            f"({type(exc).__name__}: {first_line(exc, 140)})"
        ) from None
    if not isinstance(obj, dict) or obj.get("kind") != kind:
        found = obj.get("kind") if isinstance(obj, dict) else type(obj).__name__
        raise CheckpointError(f"{str(path)!r} is not a {kind} file (found {found!r})")
    _check_schema(path, kind, obj)
    return obj


def save_model_checkpoint(
    path: str | Path,
    model_state: dict[str, torch.Tensor],
    config: dict[str, Any],
    schedule: dict[str, Any],
    metrics: dict[str, float],
) -> Path:
    """Save a trained model with what produced it.

    ``config`` is the job's whole config, so evaluation can rebuild the model and
    splits; ``schedule`` is ``{"init_seed": int, "segments": [...]}``, enough to
    retrain the same weights (see :func:`shieldtune.pipeline.stages.replay_schedule`).
    """
    return atomic_save(
        {
            "kind": MODEL_KIND,
            "model_state": model_state,
            "config": config,
            "schedule": schedule,
            "metrics": dict(metrics),
        },
        path,
    )


def save_policy(
    path: str | Path, agent_state: dict, shield_state: dict, search_space: list[str]
) -> Path:
    return atomic_save(
        {
            "kind": POLICY_KIND,
            "agent": agent_state,
            "shield": shield_state,
            "search_space": search_space,
        },
        path,
    )


register_kind(MODEL_KIND, {"model_state": (dict,), "config": (dict,), "schedule": (dict, list)})
register_kind(POLICY_KIND, {"agent": (dict,), "shield": (dict,), "search_space": (list,)})

"""Checkpoints: atomic writes, weights-only loading, tampered and corrupted files refused."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from shieldtune.checkpoint import (
    MODEL_KIND,
    POLICY_KIND,
    safe_load,
    save_model_checkpoint,
    save_policy,
)
from shieldtune.cli import main
from shieldtune.errors import CheckpointError


def test_model_checkpoint_round_trips(tmp_path):
    state = {"w": torch.arange(4.0)}
    path = save_model_checkpoint(tmp_path / "m.pt", state, {"hidden": 8}, [{"lr": 0.1}], {"a": 1.0})
    loaded = safe_load(path, MODEL_KIND)
    assert torch.equal(loaded["model_state"]["w"], state["w"])
    assert loaded["schedule"] == [{"lr": 0.1}]
    assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/shieldtune-pwned",))


def test_pickled_code_in_a_checkpoint_is_refused_not_executed(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"kind": MODEL_KIND, "payload": Exploit()}, path)
    with pytest.raises(CheckpointError, match="not a safe weights-only file"):
        safe_load(path, MODEL_KIND)
    assert not os.path.exists("/tmp/shieldtune-pwned")


def test_plain_pickle_file_is_refused(tmp_path):
    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(CheckpointError):
        safe_load(path, MODEL_KIND)


def test_truncated_checkpoint_gives_a_one_line_error(tmp_path):
    path = save_policy(tmp_path / "agent.pt", {"q": {}}, {"critic": {}}, ["learning_rate"])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as err:
        safe_load(path, POLICY_KIND)
    assert "\n" not in str(err.value) and "agent.pt" in str(err.value)


def test_wrong_kind_and_missing_file_are_reported(tmp_path):
    path = save_policy(tmp_path / "agent.pt", {}, {}, [])
    with pytest.raises(CheckpointError, match=r"not a shieldtune\.model/v1 file"):
        safe_load(path, MODEL_KIND)
    with pytest.raises(CheckpointError, match="does not exist"):
        safe_load(tmp_path / "absent.pt", MODEL_KIND)


@settings(max_examples=200, deadline=None)
@given(data=st.binary(min_size=0, max_size=400))
def test_any_bytes_are_loaded_or_refused_in_one_line_never_a_traceback(tmp_path_factory, data):
    """Issue: 260 of 900 fuzzed files escaped safe_load as IndexError, struct.error, ..."""
    path = tmp_path_factory.mktemp("fuzz") / "x.pt"
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as err:
        safe_load(path, MODEL_KIND)
    assert "\n" not in str(err.value)


def test_arbitrary_system_files_are_refused_in_one_line(capsys):
    for argv in (
        ["evaluate", "--checkpoint", "/etc/passwd"],
        ["tune", "--set", "tuner.warm_start=/etc/passwd", "--set", "tracking.enabled=false"],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.startswith("shieldtune: error:") and err.count("\n") == 1, err

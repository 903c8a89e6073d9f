"""Champion/challenger promotion decisions and the model card, without a server."""

from pathlib import Path

import pytest

from shieldtune.errors import CheckpointError
from shieldtune.safety.spec import parse_constraints
from shieldtune.tracking import registry
from shieldtune.tracking.model_card import MAX_SCHEDULE_ROWS, CardFacts, render_card
from shieldtune.tracking.registry import Promotion, decide_promotion

SAFE = {"test_acc": 0.97, "fgsm_robust_acc": 0.8, "constraints_satisfied": 1.0}


@pytest.fixture
def champion_file(monkeypatch, tmp_path):
    """Pretend the registry holds a champion checkpoint (what is measured on it is faked)."""
    path = tmp_path / "best_model.pt"
    monkeypatch.setattr(registry, "download_checkpoint", lambda *_a, **_k: path)
    return path


def _decide(challenger, champion="1", theirs=None, this="2"):
    return decide_promotion("m", challenger, champion, this, lambda _p: theirs, "sqlite:///x")


def test_a_challenger_that_fails_the_gate_is_never_promoted(champion_file):
    p = _decide({**SAFE, "constraints_satisfied": 0.0}, theirs=SAFE)
    assert not p.promoted and "safety gate failed" in p.reason


def test_the_first_model_past_the_gate_becomes_champion():
    p = _decide(SAFE, champion=None)
    assert p.promoted and p.previous_champion is None


def test_a_better_or_equal_challenger_replaces_the_champion(champion_file):
    p = _decide(SAFE, theirs={**SAFE, "test_acc": 0.97})
    assert p.promoted and "0.9700 >= champion v1's 0.9700" in p.reason
    assert p.champion_report["test_acc"] == 0.97


def test_a_worse_challenger_leaves_the_champion_in_place(champion_file):
    p = _decide(SAFE, theirs={**SAFE, "test_acc": 0.98})
    assert not p.promoted and "champion v1 stays" in p.reason


def test_a_champion_that_breaks_the_spec_on_the_same_split_is_replaced(champion_file):
    p = _decide(SAFE, theirs={**SAFE, "test_acc": 0.99, "constraints_satisfied": 0.0})
    assert p.promoted and "champion v1 does not" in p.reason


def test_a_champion_of_another_task_cannot_block_promotion(monkeypatch, champion_file):
    def refuse(_path):
        raise CheckpointError("it is a model of task 'a', not 'b'")

    p = decide_promotion("m", SAFE, "1", "2", refuse, "sqlite:///x")
    assert p.promoted and "cannot be evaluated" in p.reason and "task 'a'" in p.reason


def test_registering_the_champion_again_keeps_it():
    assert _decide(SAFE, champion="2", this="2").promoted


def _card(segments: int) -> str:
    schedule = {
        "init_seed": 3,
        "segments": [
            {"step": i + 1, "samples": 100, "seed": i, "learning_rate": 0.1 / (i + 1)}
            for i in range(segments)
        ],
    }
    report = {**SAFE, "fgsm_robust_acc_low": 0.75, "fgsm_robust_acc_high": 0.85}
    return render_card(
        CardFacts(
            task="mnist-cnn",
            model_name="m",
            version="2",
            run_id="r",
            shieldtune_version="0",
            constraints=parse_constraints(["fgsm_robust_acc >= 0.7"]),
            confidence=0.95,
            report=report,
            schedule=schedule,
            counts={"steps_run": 48, "unsafe_segments": 2, "warmup_steps": 1, "violations": 1},
            data={"source": "idx"},
            promotion=Promotion(True, "passed the safety gate; there was no champion"),
        )
    )


def test_model_card_holds_the_constraint_table_counts_schedule_and_decision():
    card = _card(48)
    assert card.startswith("# m v2 (@champion)")
    assert "| fgsm_robust_acc >= 0.7 | 0.8000 | [0.7500, 0.8500] | certified |" in card
    assert "| 48 | 2 | 1 | 1 |" in card
    assert "passed the safety gate; there was no champion" in card
    rows = [line for line in card.splitlines() if line.startswith("| ") and "| 100 |" in line]
    assert len(rows) <= MAX_SCHEDULE_ROWS + 1
    assert rows[-1].startswith("| 48 | 100 |")  # the last segment is always shown


def test_short_schedules_are_shown_whole():
    card = _card(5)
    assert "every segment" in card
    assert sum(1 for line in card.splitlines() if "| 100 |" in line) == 5


def test_download_of_a_model_without_a_checkpoint_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(registry.mlflow.artifacts, "download_artifacts", lambda **_k: str(tmp_path))
    with pytest.raises(CheckpointError, match=r"carries no best_model\.pt"):
        registry.download_checkpoint("models:/m/1", "sqlite:///x", Path(tmp_path))


def test_a_server_failure_while_fetching_the_champion_is_raised_never_a_blind_promotion(
    monkeypatch,
):
    from mlflow.exceptions import MlflowException

    def down(**_kwargs):
        raise MlflowException("API request failed: 503", error_code="TEMPORARILY_UNAVAILABLE")

    monkeypatch.setattr(registry.mlflow.artifacts, "download_artifacts", down)
    with pytest.raises(MlflowException):
        _decide(SAFE, theirs=SAFE)

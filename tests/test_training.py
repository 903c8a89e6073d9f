"""Training segments: reproducible, hyperparameters applied per segment, divergence caught."""

from __future__ import annotations

import math

import torch

from shieldtune.config import TrainingConfig
from shieldtune.job import Job
from shieldtune.tasks.contract import PIXELS
from shieldtune.tasks.mnist import MnistCnnTask
from shieldtune.training.hyperparameters import fixed_hyperparameters
from shieldtune.training.segment import AdversarialTraining, make_optimizer, train_segment

TASK = MnistCnnTask(conv1_channels=4, conv2_channels=8, hidden=32)
ADVERSARIAL = AdversarialTraining(0.1, PIXELS)


def build_model():
    return TASK.build_model(0)


def run(splits, hp_overrides=None, seed=0, budget=256, optimizer="sgd"):
    torch.manual_seed(0)
    model = build_model()
    tcfg = TrainingConfig(optimizer=optimizer)
    opt = make_optimizer(model, tcfg)
    hp = {**fixed_hyperparameters(tcfg, TASK), **(hp_overrides or {})}
    stats = train_segment(
        model,
        opt,
        splits.train,
        hp,
        budget,
        torch.Generator().manual_seed(seed),
        adversarial=ADVERSARIAL,
    )
    return model, opt, stats


def test_same_seed_gives_bitwise_identical_weights(tiny_data):
    a, _, sa = run(tiny_data, seed=3)
    b, _, sb = run(tiny_data, seed=3)
    c, _, _ = run(tiny_data, seed=4)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert sa.mean_loss == sb.mean_loss
    assert any(
        not torch.equal(va, vc) for va, vc in zip(a.parameters(), c.parameters(), strict=True)
    )


def test_segment_processes_exactly_the_budget_with_this_steps_batch_size(tiny_data):
    _, _, s = run(tiny_data, {"batch_size": 32}, budget=100)
    assert s.samples == 100 and s.batches == 4  # 32 + 32 + 32 + 4
    _, _, s = run(tiny_data, {"batch_size": 128}, budget=1000)
    assert s.samples == 1000 and s.batches == 8  # passes over the 600 images wrap around


def test_hyperparameters_are_applied_to_the_optimizer(tiny_data):
    _, opt, _ = run(tiny_data, {"learning_rate": 0.0123, "weight_decay": 1e-4, "momentum": 0.5})
    group = opt.param_groups[0]
    assert (group["lr"], group["weight_decay"], group["momentum"]) == (0.0123, 1e-4, 0.5)
    _, opt, _ = run(tiny_data, {"momentum": 0.7}, optimizer="adam")
    assert opt.param_groups[0]["betas"][0] == 0.7


def test_training_reduces_loss_on_real_mnist(tiny_data):
    _, _, first = run(tiny_data, budget=64)
    _, _, longer = run(tiny_data, budget=1200)
    assert longer.mean_loss < first.mean_loss
    assert not longer.diverged


def test_adversarial_mix_trains_and_changes_the_result(tiny_data):
    plain, _, _ = run(tiny_data, {"adv_mix": 0.0})
    mixed, _, stats = run(tiny_data, {"adv_mix": 0.5})
    assert not stats.diverged and math.isfinite(stats.mean_loss)
    assert any(
        not torch.equal(a, b) for a, b in zip(plain.parameters(), mixed.parameters(), strict=True)
    )


def test_non_finite_loss_is_reported_as_divergence_not_raised(tiny_data):
    torch.manual_seed(0)
    model = build_model()
    with torch.no_grad():
        model.classifier[-1].weight.fill_(float("inf"))
    opt = make_optimizer(model, TrainingConfig())
    hp = fixed_hyperparameters(TrainingConfig(), TASK)
    stats = train_segment(
        model, opt, tiny_data.train, hp, 4096, torch.Generator(), adversarial=ADVERSARIAL
    )
    assert stats.diverged
    assert stats.samples < 4096  # stopped early instead of finishing the budget


def test_mean_loss_above_max_loss_counts_as_divergence(tiny_data):
    torch.manual_seed(0)
    model = build_model()
    opt = make_optimizer(model, TrainingConfig())
    hp = fixed_hyperparameters(TrainingConfig(), TASK)
    # An untrained 10-class model has loss near ln(10) = 2.3, far above this limit.
    stats = train_segment(
        model,
        opt,
        tiny_data.train,
        hp,
        128,
        torch.Generator(),
        adversarial=ADVERSARIAL,
        max_loss=0.5,
    )
    assert stats.diverged and math.isfinite(stats.mean_loss)


def test_adversarial_training_radius_and_attack_are_set_apart_from_the_evaluation():
    """Issue: safety.epsilon fed both the evaluation and adversarial training."""
    from shieldtune.config import config_from_dict

    from .conftest import TINY

    cfg = config_from_dict(
        {
            **TINY,
            "training": {"adv_epsilon": 0.3, "adv_attack": "pgd", "adv_pgd_steps": 2},
            "safety": {**TINY["safety"], "epsilon": 0.1},
        }
    )
    runner = Job.from_config(cfg).steps.runner()
    assert runner._adversarial.epsilon == 0.3 and runner._adversarial.attack == "pgd"
    assert runner.suite.cfg.epsilon == 0.1
    assert config_from_dict(TINY).training.adv_epsilon is None  # default: the eval radius


def test_pgd_adversarial_training_trains_differently_from_fgsm(tiny_data):
    def with_attack(attack):
        torch.manual_seed(0)
        model = build_model()
        tcfg = TrainingConfig()
        hp = {**fixed_hyperparameters(tcfg, TASK), "adv_mix": 0.5}
        adversarial = AdversarialTraining(0.1, PIXELS, attack, 2)
        stats = train_segment(
            model,
            make_optimizer(model, tcfg),
            tiny_data.train,
            hp,
            256,
            torch.Generator().manual_seed(0),
            adversarial=adversarial,
        )
        assert not stats.diverged
        return model

    a, b = with_attack("fgsm"), with_attack("pgd")
    assert any(not torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))

"""Safety metrics: FGSM/PGD attacks, membership inference and the constraint spec.

The attacks are checked against hand-derived answers on a linear model, against
the Adversarial Robustness Toolbox (ART) on a briefly trained SmallCNN on real
MNIST, and through properties (L-inf ball, pixel range, restarts, determinism).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from shieldtune.errors import ConfigError
from shieldtune.safety import attacks
from shieldtune.safety.attacks import (
    accuracy,
    fgsm,
    fgsm_robust_accuracy,
    pgd,
    pgd_robust_accuracy,
    tensor_batches,
)
from shieldtune.safety.privacy import membership_inference, membership_test, per_sample_loss, roc
from shieldtune.safety.spec import BUILTIN_METRICS, Constraint, parse_constraints, spec_cost
from shieldtune.safety.stats import (
    Decision,
    Estimate,
    clopper_pearson,
    decide,
    looks,
    sequential_proportions,
)
from shieldtune.tasks.mnist import SmallCNN

EPS = 0.1
# Float32 slack for "within eps of x" checks: x + eps is rounded to float32.
FTOL = 1e-6


@pytest.fixture(scope="module")
def trained(tiny_data):
    """A SmallCNN trained 300 Adam steps on 600 real MNIST images (overfits on purpose)."""
    torch.manual_seed(0)
    model = SmallCNN(conv1_channels=4, conv2_channels=8, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    train = tiny_data.train
    for _ in range(300):
        idx = torch.randint(0, len(train), (64,), generator=gen)
        loss = F.cross_entropy(model(train.x[idx]), train.y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    test = tiny_data.test
    clean = accuracy(model, test.x, test.y)
    assert clean > 0.7, f"fixture model too weak to attack meaningfully: clean acc {clean}"
    return model


# ----------------------------------------------------------------- FGSM by hand

# Linear model on 4 features, 2 classes. Margin m(x) = logit0 - logit1
# = (W0 - W1) . x + (b0 - b1) = 2 x0 - 3 x1 + 0 x2 - 2.5 x3 + 0.3.
W = [[1.0, -2.0, 0.0, 0.5], [-1.0, 1.0, 0.0, 3.0]]
B = [0.1, -0.2]
HAND_EPS = 0.3
# For 2-class softmax CE, dL/dx = (p - onehot(y)) @ W; for y=0 that is p1 (W1 - W0),
# for y=1 it is p0 (W0 - W1). p > 0, so sign(grad) = sign(W_other - W_y); feature 2
# has equal weights, so its gradient is exactly 0 and FGSM leaves it alone.
HAND_X = [
    [1.0, 0.0, 0.5, 0.0],  # A y=0  m=2.3   -> adv [.7,.3,.5,.3]     m=0.05   robust
    [0.6, 0.2, 0.5, 0.1],  # B y=0  m=0.65  -> adv [.3,.5,.5,.4]     m=-1.6   fooled
    [0.95, 0.9, 0.2, 0.55],  # C y=1 m=-1.875 -> adv [1(clip),.6,.2,.25] m=-0.125 robust
    # (without the clip at 1, x0 would be 1.25 and m = +0.375: clipping saves C)
    [0.4, 0.2, 0.7, 0.1],  # D y=1  m=0.25 (wrong) -> adv [.7,0(clip),.7,0(clip)] m=1.7 wrong
    [0.3, 0.5, 0.0, 0.4],  # E y=1  m=-1.6  -> adv [.6,.2,0,.1]      m=0.65   fooled
]
HAND_Y = [0, 0, 1, 1, 1]
HAND_ADV = [
    [0.7, 0.3, 0.5, 0.3],
    [0.3, 0.5, 0.5, 0.4],
    [1.0, 0.6, 0.2, 0.25],
    [0.7, 0.0, 0.7, 0.0],
    [0.6, 0.2, 0.0, 0.1],
]


def linear_model() -> nn.Module:
    lin = nn.Linear(4, 2)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor(W))
        lin.bias.copy_(torch.tensor(B))
    return nn.Sequential(nn.Flatten(), lin)


def test_fgsm_matches_hand_computed_sign_gradient_step_on_linear_model():
    x = torch.tensor(HAND_X)
    y = torch.tensor(HAND_Y)
    adv = fgsm(linear_model(), x, y, HAND_EPS)

    # Reference 1: the closed form sign(W_other - W_y), in float32 like the library.
    w = np.array(W, dtype=np.float32)
    sign = np.stack([np.sign(w[1 - c] - w[c]) for c in HAND_Y]).astype(np.float32)
    expected = np.clip(np.array(HAND_X, np.float32) + np.float32(HAND_EPS) * sign, 0.0, 1.0)
    assert torch.equal(adv, torch.from_numpy(expected))

    # Reference 2: the general (p - onehot) @ W gradient, computed in float64.
    x64 = np.array(HAND_X)
    logits = x64 @ np.array(W).T + np.array(B)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    grad = (p - np.eye(2)[HAND_Y]) @ np.array(W)
    assert np.array_equal(np.sign(grad), sign)

    # And the decimal values worked out by hand in the comments above.
    assert adv.numpy() == pytest.approx(np.array(HAND_ADV), abs=1e-6)


def test_fgsm_clips_to_pixel_range_where_the_step_would_leave_it():
    x = torch.tensor(HAND_X)
    adv = fgsm(linear_model(), x, torch.tensor(HAND_Y), HAND_EPS)
    # C: x0 = 0.95 + 0.3 clipped to 1; D: x1 = 0.2 - 0.3 and x3 = 0.1 - 0.3 clipped to 0.
    assert adv[2, 0].item() == 1.0
    assert adv[3, 1].item() == 0.0
    assert adv[3, 3].item() == 0.0
    # A zero gradient (feature 2 has equal weights in both classes) moves nothing.
    assert torch.equal(adv[:, 2], x[:, 2])


def test_fgsm_robust_accuracy_equals_hand_derived_count():
    model = linear_model()
    x, y = torch.tensor(HAND_X), torch.tensor(HAND_Y)
    # Clean: A, B, C, E right and D wrong. After FGSM: A and C survive (C only thanks
    # to clipping), B and E are fooled, D stays wrong -> 2 of 5.
    assert accuracy(model, x, y) == pytest.approx(4 / 5)
    assert fgsm_robust_accuracy(model, x, y, HAND_EPS) == pytest.approx(2 / 5)
    # Without clipping C would flip: check the hand margin claim directly.
    unclipped_c = torch.tensor([[1.25, 0.6, 0.2, 0.25]])
    assert model(unclipped_c).argmax(1).item() == 0


def test_fgsm_leaves_inputs_parameters_and_training_mode_alone():
    model = linear_model().train()
    x, y = torch.tensor(HAND_X), torch.tensor(HAND_Y)
    x_before = x.clone()
    fgsm(model, x, y, HAND_EPS)
    fgsm_robust_accuracy(model, x, y, HAND_EPS)
    pgd_robust_accuracy(model, x, y, HAND_EPS, steps=2, restarts=1)
    assert torch.equal(x, x_before)
    assert not x.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert model.training


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    x=arrays(np.float32, (3, 6), elements=st.floats(0.0, 1.0, width=32)),
    eps=st.floats(0.0, 0.5),
)
def test_fgsm_stays_in_pixel_range_and_eps_ball_for_random_models(seed, x, eps):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 3))
    xt = torch.from_numpy(x)
    y = torch.tensor([0, 1, 2])
    adv = fgsm(model, xt, y, eps)
    assert adv.shape == xt.shape and adv.dtype == xt.dtype
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert (adv - xt).abs().max() <= eps + FTOL
    # Every coordinate is x, x +- eps, or clipped onto the pixel range's edge.
    step = np.float32(eps)
    allowed = [xt, xt + step, xt - step]
    ok = torch.zeros_like(xt, dtype=torch.bool)
    for cand in allowed:
        ok |= adv == cand
    ok |= (adv == 0.0) | (adv == 1.0)
    assert ok.all()


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    x=arrays(np.float32, (4, 5), elements=st.floats(0.0, 1.0, width=32)),
    eps=st.floats(0.0, 0.5),
    steps=st.integers(1, 4),
)
def test_pgd_stays_in_pixel_range_and_eps_ball_for_random_models(seed, x, eps, steps):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 3))
    xt = torch.from_numpy(x)
    y = torch.tensor([0, 1, 2, 0])
    adv = pgd(model, xt, y, eps, steps, generator=torch.Generator().manual_seed(seed))
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    assert (adv - xt).abs().max() <= eps + FTOL


# ----------------------------------------------------------------- FGSM/PGD vs ART


def _art_classifier(model: nn.Module):
    from art.estimators.classification import PyTorchClassifier

    return PyTorchClassifier(
        model,
        loss=nn.CrossEntropyLoss(),
        input_shape=(1, 28, 28),
        nb_classes=10,
        clip_values=(0.0, 1.0),
    )


def _acc_on(model: nn.Module, x_adv: np.ndarray, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(torch.from_numpy(x_adv)).argmax(1) == y).float().mean())


def test_fgsm_matches_art_fast_gradient_method_on_trained_cnn(trained, tiny_data):
    from art.attacks.evasion import FastGradientMethod

    x, y = tiny_data.test.x, tiny_data.test.y
    n = len(y)
    ours = fgsm(trained, x, y, EPS).numpy()
    attack = FastGradientMethod(_art_classifier(trained), eps=EPS, norm=np.inf)
    theirs = attack.generate(x.numpy(), y=y.numpy())
    mismatch = ~np.isclose(ours, theirs, rtol=0.0, atol=1e-6)
    # Only sign-zero / float-tie pixels may differ (ART takes the mean over 32-sample batches).
    assert mismatch.mean() <= 1e-3, f"{mismatch.sum()} of {mismatch.size} pixels differ"
    robust = fgsm_robust_accuracy(trained, x, y, EPS)
    assert abs(robust - _acc_on(trained, theirs, y)) <= 1 / n + 1e-9
    assert robust < accuracy(trained, x, y), "FGSM at eps=0.1 should hurt an undefended model"


def test_pgd_is_close_to_art_pgd_and_not_weaker_than_fgsm(trained, tiny_data):
    from art.attacks.evasion import ProjectedGradientDescent

    x, y = tiny_data.test.x, tiny_data.test.y
    steps = 10
    ours = pgd_robust_accuracy(trained, x, y, EPS, steps=steps, restarts=1, seed=0)
    np.random.seed(0)  # ART draws its random start from numpy's global generator
    attack = ProjectedGradientDescent(
        _art_classifier(trained),
        norm=np.inf,
        eps=EPS,
        eps_step=2.5 * EPS / steps,  # the library's default step size
        max_iter=steps,
        num_random_init=1,
        verbose=False,
    )
    art_adv = attack.generate(x.numpy(), y=y.numpy())
    assert np.abs(art_adv - x.numpy()).max() <= EPS + FTOL
    theirs = _acc_on(trained, art_adv, y)
    # Different random starts, so only "within a few points".
    assert abs(ours - theirs) <= 0.05, (ours, theirs)
    fgsm_acc = fgsm_robust_accuracy(trained, x, y, EPS)
    assert ours <= fgsm_acc + 0.02, (ours, fgsm_acc)


# ----------------------------------------------------------------- PGD properties


def test_pgd_perturbation_stays_in_eps_ball_and_pixel_range_on_real_images(trained, tiny_data):
    x, y = tiny_data.test.x[:100], tiny_data.test.y[:100]
    adv = pgd(trained, x, y, EPS, steps=5, generator=torch.Generator().manual_seed(1))
    assert adv.shape == x.shape
    assert (adv - x).abs().max() <= EPS + FTOL
    assert adv.min() >= 0.0 and adv.max() <= 1.0
    # It does move: most pixels end on the ball's boundary or a pixel-range edge.
    assert (adv - x).abs().max() > EPS / 2


def test_pgd_with_large_step_size_is_still_projected(trained, tiny_data):
    x, y = tiny_data.test.x[:50], tiny_data.test.y[:50]
    adv = pgd(trained, x, y, 0.05, steps=3, step_size=0.5, generator=torch.Generator())
    assert (adv - x).abs().max() <= 0.05 + FTOL
    assert adv.min() >= 0.0 and adv.max() <= 1.0


def test_zero_epsilon_attacks_give_clean_accuracy(trained, tiny_data):
    x, y = tiny_data.test.x[:150], tiny_data.test.y[:150]
    clean = accuracy(trained, x, y)
    assert torch.equal(fgsm(trained, x, y, 0.0), x)
    assert torch.equal(pgd(trained, x, y, 0.0, steps=2, generator=torch.Generator()), x)
    assert fgsm_robust_accuracy(trained, x, y, 0.0) == clean
    assert pgd_robust_accuracy(trained, x, y, 0.0, steps=2, restarts=2) == clean


def test_more_pgd_restarts_never_raise_robust_accuracy(trained, tiny_data):
    # With the same seed, restart k draws the same random start whatever the total
    # number of restarts, and a sample only counts if it survives every restart.
    x, y = tiny_data.test.x, tiny_data.test.y
    accs = [pgd_robust_accuracy(trained, x, y, EPS, steps=5, restarts=r, seed=7) for r in (1, 2, 3)]
    assert accs[0] >= accs[1] >= accs[2], accs
    assert accs[0] < accuracy(trained, x, y)


def test_pgd_is_deterministic_for_a_seed_and_varies_across_seeds(trained, tiny_data):
    x, y = tiny_data.test.x[:100], tiny_data.test.y[:100]

    def run(seed: int) -> torch.Tensor:
        return pgd(trained, x, y, EPS, steps=3, generator=torch.Generator().manual_seed(seed))

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    a = pgd_robust_accuracy(trained, x, y, EPS, steps=3, restarts=2, seed=11)
    b = pgd_robust_accuracy(trained, x, y, EPS, steps=3, restarts=2, seed=11)
    assert a == b


def test_attack_metrics_do_not_depend_on_the_evaluation_batch_size(trained, tiny_data, monkeypatch):
    x, y = tiny_data.test.x[:200], tiny_data.test.y[:200]
    whole = (
        accuracy(trained, x, y),
        fgsm_robust_accuracy(trained, x, y, EPS),
        per_sample_loss(trained, tensor_batches(x, y)()),
    )
    monkeypatch.setattr(attacks, "EVAL_BATCH", 37)  # 200 = 5 * 37 + 15: a ragged last batch
    assert accuracy(trained, x, y) == whole[0]
    # Per-batch mean loss rescales the gradient, which leaves its sign alone
    # (up to a rare float tie).
    assert abs(fgsm_robust_accuracy(trained, x, y, EPS) - whole[1]) <= 1 / len(y) + 1e-9
    losses = per_sample_loss(trained, tensor_batches(x, y)())
    assert np.allclose(losses, whole[2], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------- membership inference


def _in_sample(members: np.ndarray, nonmembers: np.ndarray) -> tuple[float, float, float]:
    """Max TPR - FPR, TPR at FPR <= 1% and AUC of the ROC over all samples."""
    tpr, fpr, _ = roc(members, nonmembers)
    return float(np.max(tpr - fpr)), float(np.max(tpr[fpr <= 0.01])), float(np.trapezoid(tpr, fpr))


def test_roc_of_hand_computed_losses():
    # Sorted by loss: .1M .15N .2M .25N .3M .5N .6M .7N .9N (4 members, 5 non-members).
    # TPR - FPR after each: .25 .05 .30 .10 .35 .15 .40 .20 0  -> max 0.4 at t = 0.6.
    # TPR at FPR <= 1%: only thresholds below .15 -> 1/4.
    # AUC = P(member loss < non-member loss) = (5 + 4 + 3 + 2) / 20 = 0.7.
    members = np.array([0.1, 0.2, 0.6, 0.3])
    nonmembers = np.array([0.25, 0.5, 0.7, 0.9, 0.15])
    assert _in_sample(members, nonmembers) == pytest.approx((0.4, 0.25, 0.7))
    _, _, thresholds = roc(members, nonmembers)
    assert thresholds[0] == -np.inf and list(thresholds[1:4]) == [0.1, 0.15, 0.2]


def test_tied_losses_across_sets_move_together():
    # Three samples share loss 0.5 (two members, one non-member): one threshold takes
    # all three, so the ROC goes (0,0) -> (FPR .5, TPR 1) -> (1,1), never through (0, 1).
    members, nonmembers = np.array([0.5, 0.5]), np.array([0.5, 1.0])
    assert _in_sample(members, nonmembers) == pytest.approx((0.5, 0.0, 0.75))
    assert _in_sample(members[::-1].copy(), nonmembers[::-1].copy()) == pytest.approx(
        (0.5, 0.0, 0.75)
    )


def _brute_force_mia(members: np.ndarray, nonmembers: np.ndarray) -> tuple[float, float, float]:
    thresholds = np.r_[-np.inf, np.unique(np.r_[members, nonmembers])]
    tpr = np.array([(members <= t).mean() for t in thresholds])
    fpr = np.array([(nonmembers <= t).mean() for t in thresholds])
    advantage = float(np.max(tpr - fpr))
    tpr_low = float(np.max(tpr[fpr <= 0.01]))
    diff = members[:, None] - nonmembers[None, :]
    auc = float(((diff < 0).sum() + 0.5 * (diff == 0).sum()) / diff.size)
    return advantage, tpr_low, auc


@settings(max_examples=100, deadline=None)
@given(
    members=st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5, 7.0]), min_size=1, max_size=40),
    nonmembers=st.lists(st.sampled_from([0.0, 0.1, 0.5, 1.0, 2.5, 7.0]), min_size=1, max_size=40),
    perm_seed=st.integers(0, 2**32 - 1),
)
def test_roc_agrees_with_brute_force_and_ignores_order(members, nonmembers, perm_seed):
    m, nm = np.array(members), np.array(nonmembers)
    assert _in_sample(m, nm) == pytest.approx(_brute_force_mia(m, nm), abs=1e-12)
    rng = np.random.default_rng(perm_seed)
    assert _in_sample(rng.permutation(m), rng.permutation(nm)) == pytest.approx(
        _in_sample(m, nm), abs=1e-12
    )


def test_nan_and_infinite_losses_never_look_like_members():
    for bad in (np.inf, np.nan):
        assert _in_sample(np.array([bad, bad]), np.array([bad, bad]))[0] == 0.0


def test_separated_losses_give_a_certain_advantage_and_a_tiny_p_value():
    members = np.linspace(0.0, 0.1, 200)
    nonmembers = np.linspace(1.0, 2.0, 200)
    mia = membership_test(members, nonmembers, alpha=0.05)
    assert mia.advantage.value == 1.0 and mia.advantage.low > 0.9
    assert mia.tpr_at_1fpr.value == 1.0
    assert mia.p_value < 1e-20 and mia.auc == 1.0


def test_no_leakage_trips_the_default_constraint_no_more_often_than_the_confidence_allows():
    """Members and non-members from one distribution (a model that leaks nothing): the held-out
    attack is certified to break ``mia_advantage <= 0.05`` in at most 5% of draws at confidence
    0.95, and its advantage averages 0. The in-sample sweep it replaces is biased upwards and
    trips the same constraint far more often."""
    rng = np.random.default_rng(0)
    broken_old, certified_broken, advantages = 0, 0, []
    draws = 400
    for _ in range(draws):
        losses = rng.exponential(size=(2, 500))
        old = _in_sample(losses[0], losses[1])[0]
        broken_old += old > 0.05
        mia = membership_test(losses[0], losses[1], alpha=0.05)
        advantages.append(mia.advantage.value)
        certified_broken += decide("<=", 0.05, mia.advantage) is Decision.UNSAFE
    assert certified_broken / draws <= 0.05
    assert abs(np.mean(advantages)) < 0.01
    assert broken_old / draws > 0.05  # the old point estimate's false alarms


def test_losses_are_float64_so_confident_predictions_do_not_tie_at_zero(trained, tiny_data):
    x, y = tiny_data.train.x[:300], tiny_data.train.y[:300]
    with torch.no_grad():
        float32 = F.cross_entropy(trained(x), y, reduction="none")
    float64 = per_sample_loss(trained, tensor_batches(x, y)())
    assert float64.dtype == np.float64
    assert int((float64 == 0).sum()) < int((float32 == 0).sum())
    # Without the ties, the low-FPR threshold separates the overfit model's members.
    members = per_sample_loss(trained, tensor_batches(x, y)())
    nonmembers = per_sample_loss(trained, tensor_batches(tiny_data.test.x, tiny_data.test.y)())
    assert membership_test(members, nonmembers[:300], alpha=0.05).tpr_at_1fpr.value > 0


def test_membership_inference_on_overfitted_model(trained, tiny_data):
    members = (tiny_data.train.x[:100], tiny_data.train.y[:100])
    nonmembers = (tiny_data.test.x[:100], tiny_data.test.y[:100])
    trained.train()
    mia = membership_inference(trained, [members], [nonmembers])
    assert trained.training  # restored
    trained.eval()
    # Same as scoring the float64 cross-entropy of the logits directly.
    with torch.no_grad():
        m_loss = F.cross_entropy(trained(members[0]).double(), members[1], reduction="none")
        n_loss = F.cross_entropy(trained(nonmembers[0]).double(), nonmembers[1], reduction="none")
    direct = membership_test(m_loss.numpy(), n_loss.numpy(), alpha=0.05)
    assert mia == direct
    # The fixture model fits its 600 training images better than unseen ones
    # (train loss ~0.003), so the attack beats guessing, with significance.
    assert mia.auc > 0.5
    assert mia.advantage.value > 0.05 and mia.p_value < 0.05


# ----------------------------------------------------------------- constraints


def test_parse_constraints_reads_metric_operator_and_threshold():
    cons = parse_constraints(["fgsm_robust_acc >= 0.6", "mia_advantage <= 0.05"])
    assert cons == [
        Constraint("fgsm_robust_acc", ">=", 0.6),
        Constraint("mia_advantage", "<=", 0.05),
    ]
    assert [str(c) for c in cons] == ["fgsm_robust_acc >= 0.6", "mia_advantage <= 0.05"]
    assert parse_constraints([]) == []
    # Spacing is free and the edges of [-1, 1] are allowed.
    spaced = ["  pgd_robust_acc>=1 ", "val_acc >= -1", "mia_tpr_at_1fpr<=1e-2"]
    assert parse_constraints(spaced) == [
        Constraint("pgd_robust_acc", ">=", 1.0),
        Constraint("val_acc", ">=", -1.0),
        Constraint("mia_tpr_at_1fpr", "<=", 0.01),
    ]


def test_every_documented_metric_can_be_constrained():
    cons = parse_constraints([f"{name} >= 0.5" for name in BUILTIN_METRICS])
    assert [c.metric for c in cons] == list(BUILTIN_METRICS)


def test_constraint_cost_is_the_signed_amount_broken():
    at_least, at_most = parse_constraints(["fgsm_robust_acc >= 0.6", "mia_advantage <= 0.05"])
    # '>=' : cost = threshold - value
    assert at_least.cost({"fgsm_robust_acc": 0.7}) == pytest.approx(-0.1)  # satisfied
    assert at_least.cost({"fgsm_robust_acc": 0.45}) == pytest.approx(0.15)  # broken by .15
    assert at_least.cost({"fgsm_robust_acc": 0.6}) == 0.0  # on the line counts as satisfied
    # '<=' : cost = value - threshold
    assert at_most.cost({"mia_advantage": 0.01}) == pytest.approx(-0.04)
    assert at_most.cost({"mia_advantage": 0.25}) == pytest.approx(0.2)
    assert at_most.cost({"mia_advantage": 0.05}) == 0.0


def test_spec_cost_is_the_worst_constraint():
    cons = parse_constraints(["fgsm_robust_acc >= 0.6", "mia_advantage <= 0.05"])
    both_ok = {"fgsm_robust_acc": 0.8, "mia_advantage": 0.04}
    assert spec_cost(cons, both_ok) == pytest.approx(-0.01)  # max(-0.2, -0.01)
    one_broken = {"fgsm_robust_acc": 0.5, "mia_advantage": 0.0}
    assert spec_cost(cons, one_broken) == pytest.approx(0.1)
    both_broken = {"fgsm_robust_acc": 0.5, "mia_advantage": 0.35}
    assert spec_cost(cons, both_broken) == pytest.approx(0.3)
    assert spec_cost([], both_broken) <= 0  # no spec: always safe


@pytest.mark.parametrize(
    "bad",
    [
        "robustness >= 0.5",  # unknown metric
        "FGSM_ROBUST_ACC >= 0.5",  # metric names are lower case
        "fgsm_robust_acc > 0.5",  # wrong operator
        "fgsm_robust_acc == 0.5",
        "fgsm_robust_acc => 0.5",
        "fgsm_robust_acc >= high",  # not a number
        "fgsm_robust_acc >= 1.2.3",
        "fgsm_robust_acc >= ",
        "fgsm_robust_acc >= 1.5",  # out of [-1, 1]
        "mia_advantage <= -2",
        "fgsm_robust_acc >= 1e3",
        "fgsm_robust_acc >= 0.5\nmia_advantage <= 0.1",  # two constraints in one string
        "",
        0.5,  # not a string at all
    ],
)
def test_bad_constraint_raises_one_line_config_error_naming_its_key(bad):
    with pytest.raises(ConfigError) as info:
        parse_constraints(["val_acc >= 0.9", bad])
    message = str(info.value)
    assert "safety.constraints[1]" in message
    assert "\n" not in message


# ----------------------------------------------------------------- bounds and decisions


def test_clopper_pearson_bounds_match_the_exact_binomial_tails():
    from scipy.stats import binom

    low, high = clopper_pearson(70, 100, 0.025)
    assert binom.sf(69, 100, low) == pytest.approx(0.025, rel=1e-6)
    assert binom.cdf(70, 100, high) == pytest.approx(0.025, rel=1e-6)
    assert clopper_pearson(0, 50, 0.05)[0] == 0.0 and clopper_pearson(50, 50, 0.05)[1] == 1.0


@pytest.mark.parametrize(
    ("op", "estimate", "verdict"),
    [
        (">=", Estimate(0.8, 0.75, 0.85), Decision.SAFE),
        (">=", Estimate(0.6, 0.55, 0.65), Decision.UNSAFE),
        (">=", Estimate(0.71, 0.66, 0.76), Decision.UNDECIDED),
        ("<=", Estimate(0.02, 0.0, 0.05), Decision.SAFE),
        ("<=", Estimate(0.2, 0.1, 0.3), Decision.UNSAFE),
    ],
)
def test_a_constraint_is_certified_only_by_the_pessimistic_end_of_its_bounds(op, estimate, verdict):
    threshold = 0.7 if op == ">=" else 0.05
    assert decide(op, threshold, estimate) is verdict


def test_sequential_looks_double_up_to_the_cap():
    assert looks(200, 1000) == [200, 400, 800, 1000]
    assert looks(500, 300) == [300]


def test_sequential_evaluation_stops_early_on_clear_cases_and_spends_more_on_borderline_ones():
    rng = np.random.default_rng(0)

    def stream(p: float):
        draws = rng.random(1000) < p
        return lambda a, b: {"fgsm_robust_acc": int(draws[a:b].sum())}

    sizes = looks(200, 1000)
    level = 0.05 / len(sizes)
    clear, used = sequential_proportions(
        sizes, stream(0.3), [("fgsm_robust_acc", ">=", 0.7)], level
    )
    assert used == 200 and decide(">=", 0.7, clear["fgsm_robust_acc"]) is Decision.UNSAFE
    _, used = sequential_proportions(sizes, stream(0.72), [("fgsm_robust_acc", ">=", 0.7)], level)
    assert used > 200


def test_sequential_decisions_are_wrong_no_more_often_than_the_confidence_allows():
    """A model just below the threshold (true robust accuracy 0.69 against >= 0.70): over many
    simulated validation sets, the sequential procedure certifies it safe in at most 5% of
    them at confidence 0.95, although it may look as often as it likes."""
    rng = np.random.default_rng(1)
    sizes = looks(200, 2000)
    level = 0.05 / len(sizes)
    wrong = 0
    runs = 2000
    for _ in range(runs):
        draws = rng.random(2000) < 0.69
        estimates, _ = sequential_proportions(
            sizes,
            lambda a, b, d=draws: {"fgsm_robust_acc": int(d[a:b].sum())},
            [("fgsm_robust_acc", ">=", 0.70)],
            level,
        )
        wrong += decide(">=", 0.70, estimates["fgsm_robust_acc"]) is Decision.SAFE
    assert wrong / runs <= 0.05

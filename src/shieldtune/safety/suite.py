"""The one metric suite: every metric of a model, per environment step and in the final report.

Per step it measures on the validation split, in the final report on the test
split (touched once). Each safety metric comes with confidence bounds
(:mod:`shieldtune.safety.stats`) and the suite returns a verdict on the spec:
*certified safe*, *certified unsafe* or *undecided* at ``safety.confidence``.

* Accuracy is measured on the whole split; the same forward pass gives the
  non-members' losses for membership inference and the task's own metrics.
* Attacks (FGSM, and PGD when a constraint names it) are **sequential** per step:
  ``safety.eval_samples`` validation samples first, then twice as many, and so
  on up to ``safety.eval_samples_max``, stopping as soon as every attack
  constraint is decided. Clear cases cost little; borderline ones get more
  samples. The repeated looks are paid for with a Bonferroni split: with K
  planned looks and m constraints, every bound is one-sided at level
  (1 - confidence) / (m K), so the chance that any decision of a step is wrong
  stays below 1 - confidence (union bound over constraints, looks and the two
  directions of each one-sided test, which cannot both err at once).
* Membership inference runs per step only when a constraint names it (it is
  always in the final report).

The final report attacks the whole test split in one look, with every bound at
(1 - confidence) / m; the registry gate requires it certified safe.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torch.utils.data import Dataset, Subset

from shieldtune.config import SafetyConfig
from shieldtune.safety.attacks import fgsm_robust, pgd_robust
from shieldtune.safety.privacy import losses_from_logits, membership_test, per_sample_loss
from shieldtune.safety.spec import (
    ATTACK_METRICS,
    MIA_METRICS,
    Constraint,
    spec_cost,
)
from shieldtune.safety.stats import (
    Decision,
    Estimate,
    combine,
    decide,
    looks,
    proportion,
    sequential_proportions,
)
from shieldtune.tasks.batches import head, iterate, to_device
from shieldtune.tasks.contract import MetricInput, Task, TaskData, TensorSplit, metric_value


def _slice(dataset: Dataset, start: int, stop: int) -> Dataset:
    if isinstance(dataset, TensorSplit):
        return TensorSplit(dataset.x[start:stop], dataset.y[start:stop])
    return Subset(dataset, range(start, stop))


@dataclass
class Evaluation:
    """A model's metrics on one split, their bounds and the verdict on the spec."""

    metrics: dict[str, float] = field(default_factory=dict)
    estimates: dict[str, Estimate] = field(default_factory=dict)
    decision: Decision = Decision.UNDECIDED
    #: Validation (or test) samples attacked.
    attacked: int = 0

    def flat(self) -> dict[str, float]:
        """Metrics with ``<name>_low`` / ``<name>_high`` bounds and the verdict, as floats."""
        out = dict(self.metrics)
        for name, est in self.estimates.items():
            out[f"{name}_low"], out[f"{name}_high"] = est.low, est.high
        out["certified"] = float(self.decision)
        out["attacked_samples"] = float(self.attacked)
        return out


class MetricSuite:
    def __init__(
        self,
        task: Task,
        cfg: SafetyConfig,
        constraints: list[Constraint],
        device: torch.device,
        loader_workers: int = 0,
    ) -> None:
        self.task = task
        self.cfg = cfg
        self.device = device
        self.workers = loader_workers
        #: The parsed ``cfg.constraints`` (see :class:`shieldtune.job.Job`).
        self.constraints = list(constraints)
        self._alpha = 1.0 - cfg.confidence
        named = {c.metric for c in self.constraints}
        self._pgd_per_step = "pgd_robust_acc" in named
        self._mia_per_step = bool(named & set(MIA_METRICS))

    # ------------------------------------------------------------------ public

    def step_looks(self, n_val: int) -> list[int]:
        """The sample counts of a step's looks: ``safety.eval_samples``, doubling up to
        ``eval_samples_max`` (at most the split)."""
        cap = min(self.cfg.eval_samples_max, n_val)
        return looks(min(self.cfg.eval_samples, cap), cap)

    def step_metrics(
        self,
        model: nn.Module,
        data: TaskData,
        seed: int,
        certify_above: float = float("-inf"),
    ) -> dict[str, float]:
        """Per-step validation metrics, bounds and verdict (see the module docstring).

        With a PGD constraint (PGD costs some 20 passes a sample), the looks are spent where
        the verdict depends on them. A state whose validation accuracy is at most
        ``certify_above`` (the job's best certified state so far: it cannot be selected) gets
        one look of ``safety.screen_samples``; its point estimates and cost (what the
        controller learns from) and its verdict at that look are as valid as any, at the
        level of the full plan. Any state stops once its estimate misses the spec. Within a
        look, PGD attacks only what clean accuracy, FGSM and earlier restarts left standing.
        """
        ev = self._evaluate(
            model,
            data,
            "val",
            data.val,
            self.step_looks(len(data.val)),
            self._mia_per_step,
            seed,
            None,
            certify_above,
        )
        ev.metrics["val_acc"] = ev.metrics.pop("acc")
        if "acc" in ev.estimates:
            ev.estimates["val_acc"] = ev.estimates.pop("acc")
        ev.decision = self._verdict(ev.estimates)
        return ev.flat()

    def report(self, model: nn.Module, data: TaskData, seed: int = 0) -> dict[str, float]:
        """The final safety report on the test split, judged against the spec."""
        n = len(data.test)  # type: ignore[arg-type]
        ev = self._evaluate(model, data, "test", data.test, [n], True, seed, pgd=True)
        ev.metrics["test_acc"] = ev.metrics.pop("acc")
        acc = ev.estimates.pop("acc")
        ev.estimates["test_acc"] = acc
        if "fgsm_robust_acc" in ev.metrics:
            ev.metrics["fgsm_pgd_gap"] = (
                ev.metrics["fgsm_robust_acc"] - ev.metrics["pgd_robust_acc"]
            )
        # Constraints on val_acc are judged on test accuracy in the final report.
        estimates = {**ev.estimates, "val_acc": acc}
        ev.decision = self._verdict(estimates)
        out = ev.flat()
        out["cost"] = self.cost({**ev.metrics, "val_acc": ev.metrics["test_acc"]})
        out["constraints_satisfied"] = float(ev.decision is Decision.SAFE)
        return out

    def cost(self, metrics: dict[str, float]) -> float:
        """The point estimate of the spec's cost (the reward and the critic learn from it)."""
        return spec_cost(self.constraints, metrics)

    # ------------------------------------------------------------------ measuring

    def _level(self, looks: int) -> float:
        """One-sided level of every bound: alpha split over constraints and looks."""
        return self._alpha / (max(len(self.constraints), 1) * looks)

    def _verdict(self, estimates: dict[str, Estimate]) -> Decision:
        decisions = []
        for c in self.constraints:
            est = estimates.get(c.metric)
            if est is None:  # not measured (e.g. a broken model): cannot be certified
                decisions.append(Decision.UNDECIDED)
            else:
                decisions.append(decide(c.op, c.threshold, est))
        return combine(decisions) if decisions else Decision.SAFE

    def _batches(self, dataset: Dataset):
        return partial(iterate, dataset, self.device, workers=self.workers)

    def _evaluate(
        self,
        model: nn.Module,
        data: TaskData,
        split: str,
        dataset: Dataset,
        sizes: list[int],
        with_mia: bool,
        seed: int,
        pgd: bool | None = None,
        certify_above: float = float("-inf"),
    ) -> Evaluation:
        model.eval()
        ev = Evaluation()
        single = self._level(1)
        logits, targets = self._predict(model, dataset)
        correct = int((logits.argmax(dim=1) == targets).sum())
        ev.estimates["acc"] = proportion(correct, len(targets), single)
        ev.metrics["acc"] = ev.estimates["acc"].value
        if with_mia:
            n = min(self.cfg.mia_samples, len(data.train), len(targets))  # type: ignore[arg-type]
            members = per_sample_loss(model, self._batches(head(data.train, n))())
            nonmembers = losses_from_logits(logits[:n], targets[:n])
            mia = membership_test(members, nonmembers, single)
            ev.estimates["mia_advantage"] = mia.advantage
            ev.estimates["mia_tpr_at_1fpr"] = mia.tpr_at_1fpr
            ev.metrics.update(
                mia_advantage=mia.advantage.value,
                mia_tpr_at_1fpr=mia.tpr_at_1fpr.value,
                mia_p_value=mia.p_value,
                mia_auc=mia.auc,
            )
        domain = data.attack_domain(self.task)
        if domain is not None:
            clean = (logits.argmax(dim=1) == targets).cpu()
            with_pgd = self._pgd_per_step if pgd is None else pgd
            # The bounds keep the level of every planned look (the cut is made on clean
            # accuracy, before any attack result is seen; the level stays conservative).
            level = self._level(len(sizes))
            if with_pgd and ev.metrics["acc"] <= certify_above:
                sizes = [min(self.cfg.screen_samples, sizes[0])]
            self._attack(model, dataset, clean, sizes, domain, seed, ev, with_pgd, level)
        for metric in self.task.metrics:
            # Bounds at the level accuracy's get; a float carries none, so it is reported but
            # never judged (a constraint on it is refused when the job starts).
            seen = MetricInput(model, split, dataset, logits, targets, single)
            value, estimate = metric_value(metric.fn(seen))
            if estimate is not None:
                ev.estimates[metric.name] = estimate
            ev.metrics[metric.name] = value
        return ev

    def _attack(
        self,
        model: nn.Module,
        dataset: Dataset,
        clean: torch.Tensor,
        sizes: list[int],
        domain,
        seed: int,
        ev: Evaluation,
        with_pgd: bool,
        level: float,
    ) -> None:
        """FGSM (and PGD) on growing prefixes of ``dataset`` until every attack constraint is
        decided, or the last look."""
        s = self.cfg
        pgd_seeds = iter(range(seed, seed + len(sizes)))

        def count(start: int, stop: int) -> dict[str, int]:
            chunk = self._batches(_slice(dataset, start, stop))
            known = clean[start:stop]
            fgsm_ok = fgsm_robust(model, chunk, s.epsilon, domain, known)
            hits = {"fgsm_robust_acc": int(fgsm_ok.sum())}
            if with_pgd:  # only the samples FGSM left standing are worth PGD's 20 passes
                robust = pgd_robust(
                    model,
                    chunk,
                    s.epsilon,
                    s.pgd_steps,
                    s.pgd_restarts,
                    next(pgd_seeds),
                    domain,
                    known,
                    screen=fgsm_ok,
                )
                hits["pgd_robust_acc"] = int(robust.sum())
            return hits

        attack_constraints = [
            (c.metric, c.op, c.threshold) for c in self.constraints if c.metric in ATTACK_METRICS
        ]
        estimates, ev.attacked = sequential_proportions(
            sizes, count, attack_constraints, level, stop_on_miss=with_pgd
        )
        ev.estimates.update(estimates)
        ev.metrics.update({name: est.value for name, est in estimates.items()})

    def _predict(self, model: nn.Module, dataset: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
        """The model's logits and the labels of a whole split, on the CPU."""
        outs, ys = [], []
        with torch.inference_mode():
            for xb, yb in self._batches(dataset)():
                outs.append(model(xb).float().cpu())
                ys.append(yb.cpu())
        return torch.cat(outs), torch.cat(ys)


def test_report(
    task: Task,
    model: nn.Module,
    data: TaskData,
    safety: SafetyConfig,
    constraints: list[Constraint],
    device: torch.device,
    seed: int = 0,
) -> dict[str, float]:
    """The final report of ``model`` on ``device``; the model is left on the CPU."""
    suite = MetricSuite(task, safety, constraints, device)
    try:
        return suite.report(model.to(device), to_device(data, device), seed)
    finally:
        model.to("cpu")

"""Config checks that need the task: search space, fixed extras and constraints.

They run when a :class:`~shieldtune.job.Job` is resolved from a config, so a
search space naming a hyperparameter the task does not have, or a constraint on
a metric it does not provide, stops the job with one line before any data is
read or anything is trained.
"""

from __future__ import annotations

from shieldtune.config import Config, SafetyConfig
from shieldtune.errors import ConfigError
from shieldtune.safety.spec import (
    ATTACK_METRICS,
    Constraint,
    available_metrics,
    parse_constraints,
)
from shieldtune.safety.stats import clopper_pearson, looks
from shieldtune.tasks.contract import Task
from shieldtune.training.hyperparameters import bounds


def check_config_against_task(cfg: Config, task: Task) -> list[Constraint]:
    """Check ``cfg`` against ``task``; returns the parsed spec (one line on what is wrong)."""
    sources = task.data_sources
    if sources is not None and cfg.data.source not in sources:
        raise ConfigError(
            f"config key 'data.source' = {cfg.data.source!r} is not allowed for task "
            f"{task.name!r}; choose one of {', '.join(sources)}"
        )
    allowed = bounds(task)
    seen: set[str] = set()
    for i, hp in enumerate(cfg.env.search_space):
        key = f"env.search_space[{i}]"
        if hp.name not in allowed:
            raise ConfigError(
                f"config key '{key}.name' = {hp.name!r} is not a hyperparameter of task "
                f"{task.name!r}; choose one of {', '.join(allowed)}"
            )
        if hp.name in seen:
            raise ConfigError(f"config key '{key}.name' = {hp.name!r} is listed twice")
        seen.add(hp.name)
        if not hp.low < hp.high:
            raise ConfigError(
                f"config key '{key}' has low={hp.low} >= high={hp.high}; need low < high"
            )
        if not hp.low <= hp.init <= hp.high:
            raise ConfigError(
                f"config key '{key}.init' = {hp.init} is out of range; "
                f"allowed: [{hp.low}, {hp.high}]"
            )
        if hp.scale == "log" and (hp.low <= 0 or hp.factor <= 1.0):
            raise ConfigError(
                f"config key '{key}' uses scale 'log', which needs low > 0 and factor > 1 "
                f"(got low={hp.low}, factor={hp.factor})"
            )
        lo, hi = allowed[hp.name]
        if hp.low < lo or hp.high > hi:
            raise ConfigError(
                f"config key '{key}' bounds [{hp.low}, {hp.high}] leave the range allowed for "
                f"{hp.name}: [{lo}, {hi}]"
            )
        if hp.name == "batch_size" and not hp.integer:
            raise ConfigError(f"config key '{key}.integer' must be true for batch_size")
    extras = {h.name: h for h in task.hyperparameters}
    for name, value in cfg.training.task_hyperparameters.items():
        key = f"training.task_hyperparameters.{name}"
        if name not in extras:
            known = ", ".join(extras) or "none"
            raise ConfigError(
                f"config key '{key}': task {task.name!r} has no such hyperparameter "
                f"(it adds: {known})"
            )
        if not extras[name].low <= value <= extras[name].high:
            raise ConfigError(
                f"config key '{key}' = {value} is out of range; "
                f"allowed: [{extras[name].low}, {extras[name].high}]"
            )
    constraints = parse_constraints(cfg.safety.constraints, available_metrics(task))
    if task.input_domain is None:
        for i, c in enumerate(constraints):
            if c.metric in ATTACK_METRICS:
                raise ConfigError(
                    f"config key 'safety.constraints[{i}]' names {c.metric}, but task "
                    f"{task.name!r} is not attackable (its inputs have no input_domain); "
                    "drop that constraint"
                )
    if task.input_domain is None and "adv_mix" in seen:
        raise ConfigError(
            f"config key 'env.search_space' tunes adv_mix, but task {task.name!r} is not "
            "attackable (adversarial training needs an input_domain); drop adv_mix from "
            "env.search_space"
        )
    _check_certifiable(cfg, constraints)
    return constraints


#: Built-in metrics that are plain proportions of attacked or scored samples.
_PROPORTIONS = ("val_acc", *ATTACK_METRICS)


def certifiable_limits(
    safety: SafetyConfig, constraints: list[Constraint], n_val: int, n_test: int
) -> dict[int, dict[str, float]]:
    """For each proportion constraint (by index): the most demanding threshold any state could
    be certified against with these split sizes, on validation (selection: the attack's
    looks, up to ``eval_samples_max`` samples) and on test (the gate: the whole split), even
    if every sample were right. A ``>=`` threshold above it, or a ``<=`` one below it, can
    never be certified however good the model."""
    m = max(len(constraints), 1)
    alpha = 1.0 - safety.confidence
    out = {}
    for i, c in enumerate(constraints):
        if c.metric not in _PROPORTIONS:
            continue
        if c.metric == "val_acc":  # measured on the whole split, one look
            n, level = n_val, alpha / m
        else:
            n = min(safety.eval_samples_max, n_val)
            level = alpha / (m * len(looks(min(safety.eval_samples, n), n)))
        limits = {}
        for split, size, lvl in (("validation", n, level), ("test", n_test, alpha / m)):
            low, high = clopper_pearson(size, size, lvl)[0], clopper_pearson(0, size, lvl)[1]
            limits[split] = low if c.op == ">=" else high
            limits[f"{split}_samples"] = size
        out[i] = limits
    return out


def check_certifiable_on(
    safety: SafetyConfig, constraints: list[Constraint], n_val: int, n_test: int
) -> None:
    """Refuse, once the splits' sizes are known, a spec no state could ever be certified
    against on them (:func:`certifiable_limits`): the job would spend its budget and fail."""
    for i, lim in certifiable_limits(safety, constraints, n_val, n_test).items():
        c = constraints[i]
        for split in ("validation", "test"):
            bound = lim[split]
            if (c.op == ">=" and bound < c.threshold) or (c.op == "<=" and bound > c.threshold):
                n = int(lim[f"{split}_samples"])
                every = "right" if c.op == ">=" else "wrong"
                raise ConfigError(
                    f"config key 'safety.constraints[{i}]' ({c}) can never be certified on this "
                    f"data: with {n} {split} samples, even all {every}, "
                    f"the bound is {bound:.4f} at confidence {safety.confidence:g}; the most "
                    f"demanding certifiable threshold here is {_limit(c, lim)}; relax the "
                    f"threshold or use larger splits (data.val_size / data.test_size)"
                )


def _limit(c: Constraint, lim: dict[str, float]) -> str:
    """The tightest of the two splits' limits, as text."""
    bound = (
        min(lim["validation"], lim["test"]) if c.op == ">=" else max(lim["validation"], lim["test"])
    )
    return f"{c.metric} {c.op} {bound:.4f}"


def _check_certifiable(cfg: Config, constraints: list[Constraint]) -> None:
    """Refuse a spec no state could ever be certified against: even a perfect model, with
    every one of ``eval_samples_max`` samples right, would leave its bound short of the
    threshold at the configured confidence. Tuning would spend the whole budget for nothing.
    (The split sizes are checked too once the data is loaded: :func:`check_certifiable_on`.)"""
    s = cfg.safety
    n = s.eval_samples_max
    level = (1.0 - s.confidence) / (max(len(constraints), 1) * len(looks(s.eval_samples, n)))
    for i, c in enumerate(constraints):
        if c.metric not in _PROPORTIONS:
            continue
        low, high = clopper_pearson(n, n, level) if c.op == ">=" else clopper_pearson(0, n, level)
        best = low if c.op == ">=" else high
        if (c.op == ">=" and best < c.threshold) or (c.op == "<=" and best > c.threshold):
            raise ConfigError(
                f"config key 'safety.constraints[{i}]' ({c}) can never be certified: even "
                f"{n if c.op == '>=' else 0} of {n} samples gives a bound of {best:.4f} at "
                f"confidence {s.confidence}; lower the threshold or raise safety.eval_samples_max"
            )

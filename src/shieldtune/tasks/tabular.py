"""``breast-cancer``: a linear model or a small MLP on a real tabular dataset, offline.

The Wisconsin diagnostic breast cancer data (569 patients, 30 real-valued
features of cell nuclei, malignant vs benign) ships inside scikit-learn, so it
loads without a network. Features are standardised with the training split's
statistics (the validation and test splits never inform them); that transform
ships with the registered model, so it is served on raw features. Robustness is
measured in that standardised space, with ``safety.epsilon`` in standard
deviations; the per-feature bounds are physical: every feature is a
non-negative measurement (a radius, an area, a concavity), so an attack may not
push a feature below the standardised value of 0. Membership inference applies
as for any model: training members against held-out patients.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from shieldtune.config import DataConfig
from shieldtune.errors import ConfigError
from shieldtune.tasks.contract import (
    UNBOUNDED,
    InputDomain,
    Task,
    TaskData,
    TaskHyperparameter,
    TensorSplit,
)
from shieldtune.tasks.preprocessing import Standardize
from shieldtune.tasks.splits import seeded_split, split_sizes

#: 60 / 20 / 20 of the 569 samples.
DEFAULT_SIZES = (341, 114, 114)
MODELS = ("mlp", "linear")


def _set_dropout(model: nn.Module, p: float) -> None:
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = p


class BreastCancerTask(Task):
    """Logistic regression (``model: linear``) or an MLP (``model: mlp``) on breast cancer."""

    num_classes = 2
    class_names = ("malignant", "benign")
    data_sources = ("bundled",)
    # Attackable; the bounds depend on the training split's statistics, so they come with
    # the data (TaskData.input_domain).
    input_domain = UNBOUNDED

    def __init__(self, model: str = "mlp", hidden: int = 32) -> None:
        if model not in MODELS:
            raise ConfigError(
                f"config key 'task.kwargs.model' = {model!r} is not allowed; choose one of "
                f"{', '.join(MODELS)}"
            )
        if isinstance(hidden, bool) or not isinstance(hidden, int) or not 1 <= hidden <= 4096:
            raise ConfigError(
                f"config key 'task.kwargs.hidden' = {hidden!r} must be an integer in [1, 4096]"
            )
        self.model, self.hidden = model, hidden
        self.name = f"breast-cancer-{model}"
        # Dropout is the MLP's own hyperparameter (tunable like the built-in ones).
        self.hyperparameters = (
            (TaskHyperparameter("dropout", 0.0, 0.0, 0.8, apply=_set_dropout),)
            if model == "mlp"
            else ()
        )

    def build_model(self, seed: int) -> nn.Module:
        if self.model == "linear":
            return nn.Linear(30, 2)
        h = self.hidden
        return nn.Sequential(
            nn.Linear(30, h),
            nn.ReLU(),
            nn.Dropout(0.0),
            nn.Linear(h, h),
            nn.ReLU(),
            nn.Dropout(0.0),
            nn.Linear(h, 2),
        )

    def load_data(self, cfg: DataConfig) -> TaskData:
        from sklearn.datasets import load_breast_cancer

        x, y = load_breast_cancer(return_X_y=True)
        sizes = split_sizes(cfg, DEFAULT_SIZES)
        idx = seeded_split(len(y), sizes, np.random.default_rng(cfg.split_seed))
        train = x[idx[0]]
        mean, std = train.mean(axis=0), train.std(axis=0)
        std[std == 0] = 1.0
        # Shipped with the model: raw features in, what it was trained on out.
        transform = Standardize(mean, std)

        def split(index: np.ndarray) -> TensorSplit:
            return TensorSplit(transform(x[index]), torch.from_numpy(y[index].astype(np.int64)))

        # A feature of 0 (the smallest physical value) in standardised units, per feature.
        low = torch.from_numpy(((0.0 - mean) / std).astype(np.float32))
        high = torch.full_like(low, math.inf)
        return TaskData(
            *(split(i) for i in idx),
            source="sklearn:breast_cancer",
            input_domain=InputDomain(low, high),
            transform=transform,
        )

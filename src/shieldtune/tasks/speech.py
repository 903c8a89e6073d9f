"""``japanese-vowels``: speaker recognition from speech, with a small 1-D CNN, offline.

The UCI Japanese Vowels data (Kudo et al. 1999): nine male speakers utter the
vowel /ae/; each utterance is a series of 7-29 frames of 12 LPC cepstrum
coefficients, and the task is to tell the speaker. 640 utterances ship inside
sktime (``sktime.datasets.load_japanese_vowels``), so it loads without a
network. Each utterance is resampled to 16 frames by linear interpolation and
every coefficient is standardised with the training split's statistics (the two
steps are the data's ``transform``, which ships with the registered model); the
attack radius ``safety.epsilon`` is in those standard deviations. Cepstral
coefficients are unbounded reals, so attacks are limited by their radius
alone.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from shieldtune.config import DataConfig
from shieldtune.errors import ConfigError, DataError
from shieldtune.tasks.contract import UNBOUNDED, Task, TaskData, TensorSplit
from shieldtune.tasks.preprocessing import Compose, Resample, Standardize
from shieldtune.tasks.splits import seeded_split, split_sizes

#: 60 / 20 / 20 of the 640 utterances.
DEFAULT_SIZES = (384, 128, 128)
CHANNELS = 12
FRAMES = 16
SPEAKERS = 9


def load_raw_utterances() -> tuple[list[np.ndarray], np.ndarray]:
    """All 640 utterances as recorded, each (12, 7..29 frames) float64, and speaker labels
    0..8: what :class:`~shieldtune.tasks.preprocessing.Resample` takes."""
    try:
        from sktime.datasets import load_japanese_vowels
    except ImportError as exc:  # pragma: no cover - sktime is a dependency
        raise DataError(f"the japanese-vowels task needs sktime ({exc})") from None
    xs, ys = [], []
    for part in ("train", "test"):
        frame, labels = load_japanese_vowels(split=part, return_type="nested_univ")
        for i in range(len(frame)):
            series = np.stack(
                [frame.iloc[i, c].to_numpy(dtype=np.float64) for c in range(CHANNELS)]
            )
            xs.append(series)
        ys.extend(int(label) - 1 for label in labels)
    return xs, np.asarray(ys, dtype=np.int64)


def load_utterances() -> tuple[np.ndarray, np.ndarray]:
    """All 640 utterances resampled to (N, 12, 16) float64, and speaker labels 0..8."""
    series, y = load_raw_utterances()
    return Resample(FRAMES).apply(series), y


class VowelCNN(nn.Module):
    """conv1d(3) -> ReLU -> conv1d(3) -> ReLU -> average over time -> linear."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv1d(CHANNELS, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.Conv1d(width, width, kernel_size=3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            nn.Linear(width, SPEAKERS),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class JapaneseVowelsTask(Task):
    """Which of nine speakers said /ae/, from 12 LPC cepstrum coefficients per frame."""

    name = "japanese-vowels"
    num_classes = SPEAKERS
    class_names = tuple(f"speaker-{i}" for i in range(1, SPEAKERS + 1))
    data_sources = ("bundled",)
    input_domain = UNBOUNDED

    def __init__(self, width: int = 32) -> None:
        if isinstance(width, bool) or not isinstance(width, int) or not 1 <= width <= 1024:
            raise ConfigError(
                f"config key 'task.kwargs.width' = {width!r} must be an integer in [1, 1024]"
            )
        self.width = width

    def build_model(self, seed: int) -> nn.Module:
        return VowelCNN(self.width)

    def load_data(self, cfg: DataConfig) -> TaskData:
        series, y = load_raw_utterances()
        idx = seeded_split(
            len(y), split_sizes(cfg, DEFAULT_SIZES), np.random.default_rng(cfg.split_seed)
        )
        resample = Resample(FRAMES)
        train = resample.apply([series[i] for i in idx[0]])
        mean = train.mean(axis=(0, 2), keepdims=True)
        std = train.std(axis=(0, 2), keepdims=True)
        # Shipped with the model: raw utterances of any length in, what it was trained on out.
        transform = Compose([resample, Standardize(mean, std)])

        def split(index: np.ndarray) -> TensorSplit:
            x = transform([series[i] for i in index])
            return TensorSplit(x, torch.from_numpy(y[index]))

        return TaskData(
            *(split(i) for i in idx), source="sktime:japanese_vowels", transform=transform
        )

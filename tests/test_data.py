"""MNIST loading: the bundled real sample, local IDX folders, splits and checksum errors."""

from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch

from shieldtune.config import DataConfig
from shieldtune.errors import DataError
from shieldtune.tasks.mnist_data import bundled_dir, load_mnist, read_idx


def test_bundled_sample_is_the_real_mnist_test_set():
    images = read_idx(bundled_dir() / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(bundled_dir() / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    # Published MNIST test-set class counts.
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_splits_have_configured_sizes_are_disjoint_and_in_pixel_range():
    cfg = DataConfig(train_size=500, val_size=200, test_size=100, split_seed=3)
    s = load_mnist(cfg)
    assert (len(s.train), len(s.val), len(s.test)) == (500, 200, 100)
    assert s.train.x.shape == (500, 1, 28, 28) and s.train.x.dtype == torch.float32
    assert float(s.train.x.min()) >= 0.0 and float(s.train.x.max()) <= 1.0
    rows = torch.cat([s.train.x, s.val.x, s.test.x]).flatten(1)
    assert len(torch.unique(rows, dim=0)) == 800  # no image shared between splits


def test_splits_are_deterministic_per_seed_and_differ_across_seeds():
    a = load_mnist(DataConfig(train_size=100, val_size=50, test_size=50, split_seed=1))
    b = load_mnist(DataConfig(train_size=100, val_size=50, test_size=50, split_seed=1))
    c = load_mnist(DataConfig(train_size=100, val_size=50, test_size=50, split_seed=2))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.y, c.train.y)


def test_local_idx_folder_with_train_and_test_parts_draws_test_from_t10k(tmp_path):
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        src = bundled_dir() / f"t10k-{kind}.gz"
        # An uncompressed "train" part (a copy of the sample) and the gzipped test part.
        with gzip.open(src, "rb") as fh:
            (tmp_path / f"train-{kind}").write_bytes(fh.read())
        shutil.copy(src, tmp_path / f"t10k-{kind}.gz")
    s = load_mnist(
        DataConfig(
            source="idx", root=str(tmp_path), train_size=9000, val_size=1000, test_size=10000
        )
    )
    assert (len(s.train), len(s.val), len(s.test)) == (9000, 1000, 10000)


def test_corrupted_file_is_reported_by_name(tmp_path):
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        shutil.copy(bundled_dir() / f"t10k-{kind}.gz", tmp_path / f"t10k-{kind}.gz")
    target = tmp_path / "t10k-labels-idx1-ubyte.gz"
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\.gz"):
        load_mnist(
            DataConfig(source="idx", root=str(tmp_path), train_size=10, val_size=10, test_size=10)
        )


def test_missing_folder_and_missing_partner_file_give_clear_errors(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_mnist(DataConfig(source="idx", root=str(tmp_path / "absent")))
    with pytest.raises(DataError, match="no MNIST IDX files"):
        load_mnist(DataConfig(source="idx", root=str(tmp_path)))
    shutil.copy(bundled_dir() / "t10k-images-idx3-ubyte.gz", tmp_path)
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load_mnist(DataConfig(source="idx", root=str(tmp_path)))


def test_truncated_idx_file_is_rejected(tmp_path):
    raw = tmp_path / "t10k-labels-idx1-ubyte"
    with gzip.open(bundled_dir() / "t10k-labels-idx1-ubyte.gz", "rb") as fh:
        raw.write_bytes(fh.read()[:-5])
    with pytest.raises(DataError, match="truncated"):
        read_idx(raw)


def test_split_sizes_larger_than_the_data_are_rejected():
    with pytest.raises(DataError, match="exceeds the 10000 samples"):
        load_mnist(DataConfig(train_size=9000, val_size=1000, test_size=1000))


def test_torchvision_source_reads_mnist_through_torchvision(tmp_path):
    """The real torchvision.datasets.MNIST code path, offline: its raw folder is pre-filled.

    No network here, so the official 60k training files cannot be fetched; the
    bundled 10k images stand in for both parts. torchvision finds every raw file
    present and skips the download, so this exercises everything but the fetch.
    """
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        with gzip.open(bundled_dir() / f"t10k-{kind}.gz", "rb") as fh:
            data = fh.read()
        (raw / f"t10k-{kind}").write_bytes(data)
        (raw / f"train-{kind}").write_bytes(data)
    s = load_mnist(
        DataConfig(
            source="torchvision", root=str(tmp_path), train_size=800, val_size=200, test_size=300
        )
    )
    assert (len(s.train), len(s.val), len(s.test)) == (800, 200, 300)
    assert s.source == "mnist:torchvision"
    assert float(s.test.x.max()) == 1.0

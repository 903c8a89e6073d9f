"""MNIST for the ``mnist-cnn`` task: loading and deterministic splits, as in-memory tensors.

Three sources share one code path after loading:

* ``bundled`` — the real 10,000-image MNIST test set shipped inside the package,
  so the tuner, the tests and CI run offline;
* ``idx`` — any local folder of (optionally gzipped) IDX files, for air-gapped
  clusters that mirror MNIST themselves;
* ``torchvision`` — ``torchvision.datasets.MNIST`` with download, for users
  with network access (the full 60,000 + 10,000 images).

Images are kept as float32 in [0, 1] (pixel space); normalisation lives inside
the model so that adversarial attacks clip to the true pixel range.
"""

from __future__ import annotations

import gzip
import hashlib
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from shieldtune.config import DataConfig
from shieldtune.errors import DataError
from shieldtune.tasks.contract import TaskData, TensorSplit
from shieldtune.tasks.splits import check_size, seeded_split, split_sizes

#: md5 sums of the published .gz files (the ones torchvision checks).
MNIST_MD5 = {
    "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
    "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
    "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
    "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
}

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (gzipped or raw) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file '{path}': {exc}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DataError(f"'{path}' is not an IDX file (bad magic number)")
    ndim = raw[3]
    header = 4 + 4 * ndim
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(dims)) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"'{path}' is truncated or padded: header promises {expected} bytes, found "
            f"{len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _find(folder: Path, stem: str) -> Path | None:
    for candidate in (
        folder / f"{stem}.gz",
        folder / stem,
        folder / "MNIST" / "raw" / f"{stem}.gz",
        folder / "MNIST" / "raw" / stem,
    ):
        if candidate.is_file():
            return candidate
    return None


def _load_part(folder: Path, part: str, verify: bool) -> tuple[np.ndarray, np.ndarray] | None:
    """Load ``train`` or ``t10k`` images+labels from ``folder``; None when absent."""
    paths = {
        kind: _find(folder, f"{part}-{kind}") for kind in ("images-idx3-ubyte", "labels-idx1-ubyte")
    }
    if all(p is None for p in paths.values()):
        return None
    for kind, p in paths.items():
        if p is None:
            raise DataError(f"'{folder}' has {part} files but no '{part}-{kind}[.gz]'; add it")
    if verify:
        for kind, p in paths.items():
            # The published md5 sums are of the .gz archives; raw files are checked by
            # their IDX header (read_idx rejects truncated or padded files).
            if p is not None and p.suffix == ".gz" and _md5(p) != MNIST_MD5[f"{part}-{kind}"]:
                raise DataError(
                    f"checksum mismatch for '{p}': the file is corrupted or not the published "
                    "MNIST; replace it with a fresh copy"
                )
    images = read_idx(paths["images-idx3-ubyte"])  # type: ignore[arg-type]
    labels = read_idx(paths["labels-idx1-ubyte"])  # type: ignore[arg-type]
    if images.ndim != 3 or images.shape[1:] != (28, 28) or labels.shape != (images.shape[0],):
        raise DataError(f"'{folder}' {part} files are not 28x28 images with one label each")
    return images, labels


def bundled_dir() -> Path:
    """Folder of the MNIST sample shipped as package data."""
    return Path(str(resources.files("shieldtune") / "data"))


def _load_torchvision(root: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        from torchvision.datasets import MNIST
    except ImportError as exc:  # pragma: no cover - torchvision is a dependency
        raise DataError(f"data.source=torchvision needs torchvision ({exc})") from None
    parts = {}
    for part, train in (("train", True), ("t10k", False)):
        try:
            ds = MNIST(str(root), train=train, download=True)
        except (RuntimeError, OSError) as exc:
            raise DataError(
                f"torchvision could not download MNIST into '{root}' ({exc}); without network "
                "access use data.source=bundled or data.source=idx with data.root=FOLDER"
            ) from None
        parts[part] = (ds.data.numpy(), ds.targets.numpy())
    return parts


#: Default split sizes (``data.*_size`` left unset).
DEFAULT_SIZES = (6000, 2000, 2000)


def _to_split(images: np.ndarray, labels: np.ndarray, index: np.ndarray) -> TensorSplit:
    x = torch.from_numpy(np.ascontiguousarray(images[index])).to(torch.float32).div_(255.0)
    y = torch.from_numpy(labels[index].astype(np.int64))
    return TensorSplit(x.unsqueeze(1).contiguous(), y)


def load_mnist(cfg: DataConfig) -> TaskData:
    """Load MNIST per ``cfg`` and cut seeded train/val/test splits of the configured sizes.

    When the source has the official training part, train/val come from it and
    test from the official test part; with only the test part (the bundled
    sample), all three are disjoint slices of it.
    """
    if cfg.source == "bundled":
        parts = {"t10k": _load_part(bundled_dir(), "t10k", verify=True)}
    elif cfg.source == "idx":
        if not cfg.root:
            raise DataError("data.source=idx needs data.root=FOLDER holding MNIST IDX files")
        folder = Path(cfg.root)
        if not folder.is_dir():
            raise DataError(f"data.root '{folder}' is not a folder; point it at MNIST IDX files")
        parts = {p: _load_part(folder, p, verify=True) for p in ("train", "t10k")}
    else:
        parts = _load_torchvision(Path(cfg.root or "~/.cache/shieldtune/mnist").expanduser())
    parts = {k: v for k, v in parts.items() if v is not None}
    if not parts:
        raise DataError(f"no MNIST IDX files found in '{cfg.root}'; expected t10k-*-ubyte[.gz]")
    train_size, val_size, test_size = split_sizes(cfg, DEFAULT_SIZES)
    rng = np.random.default_rng(cfg.split_seed)
    if "train" in parts:
        tr_x, tr_y = parts["train"]
        need = train_size + val_size
        check_size("train_size + data.val_size", need, len(tr_y))
        perm = rng.permutation(len(tr_y))
        train = _to_split(tr_x, tr_y, perm[:train_size])
        val = _to_split(tr_x, tr_y, perm[train_size:need])
        if "t10k" in parts:
            te_x, te_y = parts["t10k"]
            check_size("test_size", test_size, len(te_y))
            test = _to_split(te_x, te_y, rng.permutation(len(te_y))[:test_size])
        else:
            check_size("train_size + data.val_size + data.test_size", need + test_size, len(tr_y))
            test = _to_split(tr_x, tr_y, perm[need : need + test_size])
    else:
        x, y = parts["t10k"]
        tr, va, te = seeded_split(len(y), (train_size, val_size, test_size), rng)
        train, val, test = (_to_split(x, y, idx) for idx in (tr, va, te))
    return TaskData(train=train, val=val, test=test, source=f"mnist:{cfg.source}")

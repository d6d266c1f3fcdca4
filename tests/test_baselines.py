"""The unlearning trainers on the 20-person test world: each lowers forget accuracy, gradient accumulation does not
change the gradient, the reference stays frozen, and the divergence guard stops before an update
of the weights that went bad."""

from __future__ import annotations

import pytest
import torch

from unstar_trl.data import load_unlearning_data
from unstar_trl.method.probe import accuracy, probe
from unstar_trl.method.trainers import (METHODS, DivergenceError, GradAscentKLTrainer, GradDiffTrainer,
                                       GradientAscentTrainer, NPOTrainer, base)
from unstar_trl.method.trainers.collators import REFERENCE_COLUMN
from unstar_trl.method.trainers.losses import nll, sequence_log_probs
from unstar_trl.models import load_model


@pytest.fixture(scope="module")
def data(world_dir):
    return load_unlearning_data(world_dir / "data")


def load(world_dir):
    return load_model(world_dir / "model")


def make(trainer_class, world_dir, data, tmp_path, **overrides):
    model, tokenizer = load(world_dir)
    config_class = next(config for trainer, config in METHODS.values() if trainer is trainer_class)
    args = config_class(output_dir=str(tmp_path), disable_tqdm=True, **overrides)
    return trainer_class(model=model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                         processing_class=tokenizer)


def test_pairs_mask_the_prompt(world_dir, data, tmp_path):
    trainer = make(GradientAscentTrainer, world_dir, data, tmp_path)
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])
    assert set(batch) == {"forget"}  # grad_ascent: no retain term, so no retain batch
    record = data.forget[0]
    ids, labels = batch["forget"]["input_ids"][0], batch["forget"]["labels"][0]
    text = trainer.processing_class.decode(ids[labels != -100])
    assert text == f" {record['answer']}{trainer.processing_class.eos_token}"
    assert trainer.processing_class.decode(ids[labels == -100]).startswith(f"Question: {record['question']}\nAnswer:")


@pytest.mark.parametrize("method", sorted(METHODS))
def test_each_method_lowers_forget_accuracy(method, world_dir, data, tmp_path):
    trainer_class, _ = METHODS[method]
    trainer = make(trainer_class, world_dir, data, tmp_path, learning_rate=3e-3, max_steps=8,
                   per_device_train_batch_size=8, max_forget_nll=None)
    before = accuracy(probe(trainer.model, trainer.processing_class, data.forget))
    trainer.train()
    after = accuracy(probe(trainer.model, trainer.processing_class, data.forget))
    assert before >= 0.8
    assert after < before - 0.3, f"{method}: forget accuracy {before:.2f} -> {after:.2f}"
    terms = trainer.history[-1]
    fits = sum(log["steps"] > 0 for log in trainer.rounds) if method == "unstar" else 1  # UnSTAR: max_steps a round
    assert terms["step"] == trainer.state.global_step == 8 * fits and "forget_loss" in terms
    assert ("retain_loss" in terms) == (trainer.args.retain_weight > 0)


def one_sgd_step_delta(world_dir, data, tmp_path, batch_size, accumulation):
    trainer = make(GradDiffTrainer, world_dir, data, tmp_path, optim="sgd", learning_rate=1.0, max_steps=1,
                   per_device_train_batch_size=batch_size, gradient_accumulation_steps=accumulation)
    before = {name: parameter.detach().clone() for name, parameter in trainer.model.named_parameters()}
    trainer.train()
    return {name: before[name] - parameter.detach() for name, parameter in trainer.model.named_parameters()}


def test_gradient_accumulation_gives_the_same_gradient(world_dir, data, tmp_path):
    whole = one_sgd_step_delta(world_dir, data, tmp_path / "1x4", batch_size=4, accumulation=1)
    halves = one_sgd_step_delta(world_dir, data, tmp_path / "2x2", batch_size=2, accumulation=2)
    assert any(delta.abs().max() > 1e-4 for delta in whole.values())
    for name in whole:
        torch.testing.assert_close(halves[name], whole[name], rtol=1e-4, atol=1e-6, msg=name)


def test_reference_stays_frozen(world_dir, data, tmp_path, monkeypatch):
    monkeypatch.setattr(base, "prefer_table", lambda model, rows: False)  # a held copy (test_reference_tables: tables)
    trainer = make(GradAscentKLTrainer, world_dir, data, tmp_path, learning_rate=3e-3, max_steps=3)
    reference = trainer.ref_model
    assert reference is not None and reference is not trainer.model and not reference.training
    start = {name: parameter.detach().clone() for name, parameter in reference.named_parameters()}
    trainer.train()
    assert all(not parameter.requires_grad for parameter in reference.parameters())
    assert not reference.training
    for name, parameter in reference.named_parameters():
        assert torch.equal(parameter, start[name]), name
    moved = dict(trainer.model.named_parameters())
    assert any(not torch.equal(moved[name], start[name]) for name in start)
    # and it answers with its own weights: a copy of a model whose forward the Trainer patched ran the trained one
    original = load_model(world_dir / "model")[0]
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    assert torch.allclose(trainer.reference_logits(inputs), trainer.logits(original, inputs))
    assert not torch.allclose(trainer.reference_logits(inputs), trainer.logits(trainer.model, inputs))


def test_npo_computes_its_reference_once_before_training_and_holds_none(world_dir, data, tmp_path, monkeypatch):
    """NPO's reference is needed only on the fixed forget rows: their sequence log-probs are computed once, before
    training, equal to what the reference gives on the fly, and no reference model is held."""
    trainer = make(NPOTrainer, world_dir, data, tmp_path / "npo", learning_rate=3e-3, max_steps=3, retain_weight=0)
    assert trainer.ref_model is None
    batch = trainer.data_collator([trainer.train_dataset[index] for index in (0, 3, 5)])["forget"]  # padded rows
    assert batch["attention_mask"].sum(-1).unique().numel() > 1  # of different lengths
    reference = load_model(world_dir / "model")[0].eval()
    on_the_fly, _ = sequence_log_probs(trainer.logits(reference, batch), batch["labels"])
    torch.testing.assert_close(batch[REFERENCE_COLUMN], on_the_fly, rtol=1e-5, atol=1e-4)
    # the loss equals that of NPO with a held reference (a KL retain term's copy), which computes it on the fly
    monkeypatch.setattr(base, "prefer_table", lambda model, rows: False)
    held = make(NPOTrainer, world_dir, data, tmp_path / "held", retain_loss_type="kl")
    assert held.ref_model is not None
    logits = held.logits(held.model, batch)
    fly = {key: value for key, value in batch.items() if key != REFERENCE_COLUMN}
    torch.testing.assert_close(held.forget_loss(held.model, batch, logits), held.forget_loss(held.model, fly, logits))
    start = list(trainer.train_dataset[REFERENCE_COLUMN])
    trainer.train()
    assert trainer.ref_model is None and list(trainer.train_dataset[REFERENCE_COLUMN]) == start
    assert not torch.allclose(trainer.logits(trainer.model, fly), trainer.logits(reference, fly))  # the model moved


def test_divergence_guard_stops_before_updating_the_weights_that_went_bad(world_dir, data, tmp_path):
    # one batch holds the whole forget set, so every step's forget_nll is that of the weights it started from
    trainer = make(GradientAscentTrainer, world_dir, data, tmp_path, learning_rate=0.05, max_steps=50,
                   per_device_train_batch_size=len(data.forget), max_forget_nll=30.0)
    with pytest.raises(DivergenceError) as caught:
        trainer.train()
    error = caught.value
    assert error.step == trainer.state.global_step >= 1  # no update after the bad loss
    assert "forget_nll" in error.reason or "nan" in error.reason or "inf" in error.reason
    model = trainer.model.eval()
    assert all(torch.isfinite(parameter).all() for parameter in model.parameters())
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(trainer.train_dataset))])
    with torch.no_grad():
        held = nll(model(input_ids=batch["forget"]["input_ids"],
                         attention_mask=batch["forget"]["attention_mask"]).logits, batch["forget"]["labels"]).item()
    logged = {entry["step"]: entry["forget_nll"] for entry in trainer.history}
    # the weights held are those of `step`: the first whose forget NLL crossed the bound (the step before passed)
    if "exceeds" in error.reason:
        assert held > 30.0 and float(error.reason.split()[1]) == pytest.approx(held, abs=0.06)
    assert logged[error.step] <= 30.0


def test_divergence_guard_catches_a_collapse_to_uniform_output(world_dir, data, tmp_path):
    # a huge step flattens the output: the forget NLL settles at ln(vocab), under any NLL bound, and gradients vanish
    trainer = make(GradientAscentTrainer, world_dir, data, tmp_path, learning_rate=1000.0, max_steps=10,
                   per_device_train_batch_size=len(data.forget))
    start = {name: parameter.detach().clone() for name, parameter in trainer.model.named_parameters()}
    with pytest.raises(DivergenceError, match="collapsed to uniform") as caught:
        trainer.train()
    assert caught.value.step == trainer.state.global_step
    logged = [entry["entropy_share"] for entry in trainer.history]
    assert logged[0] < 0.5 and logged[-1] < 0.95  # the collapsed step raised before it was logged
    if caught.value.step == 0:  # the weights it started from
        assert all(torch.equal(parameter, start[name]) for name, parameter in trainer.model.named_parameters())

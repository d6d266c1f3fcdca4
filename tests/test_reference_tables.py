"""The frozen reference as a table of its logits on fixed rows (`reference_table.py`): the loss and its gradient
equal those of a held copy on padded batches (the KL retain term, UNDIAL's target), the table is held only where it
is smaller than the copy, and a resumed run's reference is the run's starting model, as the copy's and NPO's
precomputed log-probs are."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from unstar_trl.data import load_unlearning_data
from unstar_trl.method.trainers import (METHODS, AltPOTrainer, GradAscentKLTrainer, NPOTrainer, UndialTrainer, base,
                                        reference_table)
from unstar_trl.method.trainers.collators import ALTERNATE_REFERENCE_COLUMN, REFERENCE_COLUMN, ROW_COLUMN, pad_pairs
from unstar_trl.models import load_model
from unstar_trl.text import PLAIN_TEMPLATE


@pytest.fixture(scope="module")
def data(world_dir):
    return load_unlearning_data(world_dir / "data")


def make(trainer_class, model, tokenizer, data, folder, **overrides):
    config_class = next(config for trainer, config in METHODS.values() if trainer is trainer_class)
    args = config_class(output_dir=str(folder), disable_tqdm=True, max_forget_nll=None, max_entropy_share=None,
                        **overrides)
    return trainer_class(model=model, args=args, train_dataset=data.forget, retain_dataset=data.retain_train,
                         processing_class=tokenizer)


def held_copy(monkeypatch):
    """Make the next trainers hold a copy of the weights, whatever the sizes."""
    monkeypatch.setattr(base, "prefer_table", lambda model, rows: False)


def moved(trainer, seed: int = 0) -> None:
    """Move the trainer's model away from the reference (the same way for every trainer), so the terms that compare
    them are not at their minimum."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in trainer.model.parameters():
            parameter.add_(0.02 * torch.randn(parameter.shape, generator=generator))


@pytest.mark.parametrize("trainer_class, role", [(GradAscentKLTrainer, "retain"), (UndialTrainer, "forget")])
def test_the_table_gives_the_loss_and_gradient_of_a_held_copy(trainer_class, role, world_dir, data, tmp_path,
                                                              monkeypatch):
    """On a padded batch of rows of different lengths, the term that reads the reference (KL to it on retain rows,
    UNDIAL's adjusted target on forget rows) and its gradient are the same from the table as from a held copy."""
    tabled = make(trainer_class, *load_model(world_dir / "model"), data, tmp_path / "table", retain_loss_type="kl")
    assert tabled.ref_model is None and set(tabled.reference_tables) == {role, "retain"}
    held_copy(monkeypatch)
    copied = make(trainer_class, *load_model(world_dir / "model"), data, tmp_path / "copy", retain_loss_type="kl")
    assert copied.ref_model is not None and not copied.reference_tables
    rows = [tabled.collator.retain[index] for index in (7, 0, 3, 5)] if role == "retain" else [
        tabled.train_dataset[index] for index in (7, 0, 3, 5)]
    batch = pad_pairs(rows, tabled.processing_class.pad_token_id)
    assert batch["attention_mask"].sum(-1).unique().numel() > 1 and batch[ROW_COLUMN].tolist() == [7, 0, 3, 5]
    terms = {}
    for name, trainer in (("table", tabled), ("copy", copied)):
        moved(trainer)
        trainer.model.zero_grad()
        logits = trainer.logits(trainer.model, batch)
        loss = trainer.retain_loss(trainer.model, batch) if role == "retain" else trainer.forget_loss(
            trainer.model, batch, logits)
        loss.backward()
        terms[name] = loss.detach(), {key: p.grad.clone() for key, p in trainer.model.named_parameters()}
    (table_loss, table_grads), (copy_loss, copy_grads) = terms["table"], terms["copy"]
    assert copy_loss > 1e-3
    torch.testing.assert_close(table_loss, copy_loss, rtol=1e-5, atol=1e-7)
    assert any(grad.abs().max() > 1e-4 for grad in copy_grads.values())
    for key, grad in copy_grads.items():
        torch.testing.assert_close(table_grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)


def test_altpo_precomputes_the_reference_on_both_answers_and_matches_a_held_copy(world_dir, data, tmp_path,
                                                                                   monkeypatch):
    """AltPO needs the reference only on each pair's truth and alternative, rows fixed before training: their
    sequence log-probs are computed once, carried beside the batch (not padded as a companion), no copy is held, and
    on a padded batch the loss and its gradient are those of AltPO with a held copy, which computes them on the fly."""
    settings = dict(n_alternatives=2, generator="template")
    precomputed = make(AltPOTrainer, *load_model(world_dir / "model"), data, tmp_path / "precomputed", **settings)
    assert precomputed.ref_model is None and not precomputed.reference_tables
    held_copy(monkeypatch)
    copied = make(AltPOTrainer, *load_model(world_dir / "model"), data, tmp_path / "copy", retain_loss_type="kl",
                  **settings)  # (a KL retain term's copy, which forget_loss uses when the batch lacks the figures)
    assert copied.ref_model is not None
    batch = precomputed.data_collator([precomputed.train_dataset[index] for index in (7, 0, 3, 5)])["forget"]
    for rows in (batch, batch["alternate"]):
        assert rows["attention_mask"].sum(-1).unique().numel() > 1  # rows of different lengths
    assert set(batch["alternate"]) == {"input_ids", "attention_mask", "labels"}
    assert batch[REFERENCE_COLUMN].shape == batch[ALTERNATE_REFERENCE_COLUMN].shape == (4,)
    fly = {key: value for key, value in batch.items() if key not in (REFERENCE_COLUMN, ALTERNATE_REFERENCE_COLUMN)}
    terms = {}
    for name, trainer, inputs in (("precomputed", precomputed, batch), ("copy", copied, fly)):
        moved(trainer)
        trainer.model.zero_grad()
        loss = trainer.forget_loss(trainer.model, inputs, trainer.forget_logits(trainer.model, inputs))
        loss.backward()
        terms[name] = loss.detach(), {key: p.grad.clone() for key, p in trainer.model.named_parameters()}
    (precomputed_loss, precomputed_grads), (copy_loss, copy_grads) = terms["precomputed"], terms["copy"]
    torch.testing.assert_close(precomputed_loss, copy_loss, rtol=1e-5, atol=1e-6)
    assert any(grad.abs().max() > 1e-4 for grad in copy_grads.values())
    for key, grad in copy_grads.items():
        torch.testing.assert_close(precomputed_grads[key], grad, rtol=1e-4, atol=1e-6, msg=key)


def test_the_table_is_held_only_where_it_is_smaller_than_the_copy(world_dir, data, tmp_path, caplog):
    """The world's model (a small vocabulary) takes the table; a model of fewer weights over a large vocabulary keeps
    the copy for the same rows, and takes the table again for a few rows. Each choice is one info line with both
    sizes."""
    tokenizer = load_model(world_dir / "model")[1]
    wide = LlamaConfig(vocab_size=60_000, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
                       num_attention_heads=1, num_key_value_heads=1, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    few = SimpleNamespace(forget=data.forget, retain_train=data.retain_train[:2])
    runs = {"small vocabulary": (load_model(world_dir / "model")[0], data),
            "large vocabulary": (LlamaForCausalLM(wide), data),
            "large vocabulary, 2 retain rows": (LlamaForCausalLM(wide), few)}
    chosen = {}
    for name, (model, rows) in runs.items():
        copy = reference_table.copy_bytes(model)
        with caplog.at_level(logging.INFO, logger="unstar_trl"):
            caplog.clear()
            trainer = make(GradAscentKLTrainer, model, tokenizer, rows, tmp_path / name.replace(" ", "-"),
                           prompt_template=PLAIN_TEMPLATE)
        table = reference_table.table_bytes({"retain": trainer.collator.retain}, model.config.vocab_size)
        chosen[name] = "table" if trainer.reference_tables else "copy"
        assert chosen[name] == ("table" if table < copy else "copy")
        assert (trainer.ref_model is None) == (chosen[name] == "table")
        if trainer.reference_tables:
            assert trainer.reference_tables["retain"].values.numel() * 4 == table
        lines = [record.getMessage() for record in caplog.records if "frozen reference" in record.getMessage()]
        assert len(lines) == 1 and f"{table / 2**20:.1f} MiB" in lines[0] and f"{copy / 2**20:.1f} MiB" in lines[0]
        assert lines[0].startswith(f"frozen reference: a {chosen[name]}")
    assert list(chosen.values()) == ["table", "copy", "table"]


def test_a_resumed_run_has_the_starting_model_as_its_reference(world_dir, data, tmp_path, monkeypatch):
    """A resumed run is built from the run's starting model and loads the checkpoint's weights in `train`: its
    retain table and NPO's precomputed log-probs are those of the uninterrupted run (not of the checkpoint's
    weights), and it ends where the uninterrupted run ends, as a run that holds a copy does."""
    settings = dict(retain_loss_type="kl", learning_rate=3e-3, max_steps=3, save_strategy="steps", save_steps=1,
                    per_device_train_batch_size=4)
    whole = make(NPOTrainer, *load_model(world_dir / "model"), data, tmp_path / "whole", **settings)
    whole.train()
    checkpoint = tmp_path / "whole" / "checkpoint-1"
    resumed = make(NPOTrainer, *load_model(world_dir / "model"), data, tmp_path / "resumed", **settings)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    from_checkpoint = make(NPOTrainer, *load_model(checkpoint), data, tmp_path / "wrong", **settings)
    assert resumed.ref_model is None
    assert torch.equal(resumed.reference_tables["retain"].values, whole.reference_tables["retain"].values)
    assert resumed.train_dataset[REFERENCE_COLUMN] == whole.train_dataset[REFERENCE_COLUMN]
    # (which a reference taken from the checkpoint's weights would not be)
    assert not torch.allclose(from_checkpoint.reference_tables["retain"].values,
                              whole.reference_tables["retain"].values)
    assert from_checkpoint.train_dataset[REFERENCE_COLUMN] != whole.train_dataset[REFERENCE_COLUMN]
    held_copy(monkeypatch)
    copied = make(NPOTrainer, *load_model(world_dir / "model"), data, tmp_path / "copied", **settings)
    copied.train(resume_from_checkpoint=str(checkpoint))
    assert copied.ref_model is not None
    last = {name: trainer.history[-1] for name, trainer in (("whole", whole), ("resumed", resumed),
                                                               ("copied", copied))}
    assert last["whole"]["step"] == last["resumed"]["step"] == last["copied"]["step"] == 3
    assert last["whole"]["retain_kl"] > 1e-5
    expected = dict(whole.model.named_parameters())
    for name, trainer in (("resumed", resumed), ("copied", copied)):
        for term in ("loss", "retain_kl", "forget_loss"):
            assert last[name][term] == pytest.approx(last["whole"][term], rel=1e-3, abs=1e-6), (name, term)
        for key, parameter in trainer.model.named_parameters():
            torch.testing.assert_close(parameter, expected[key], rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize("method, settings", [
    ("unstar", {"retain_loss_type": "kl", "generator": "template"}),  # retain answers rewritten in the model's words
    ("unstar", {"reversed_loss_type": "npo", "reversed_loss_weight": 1.0, "generator": "template"}),  # new questions
])
def test_a_method_that_needs_the_reference_beyond_fixed_rows_keeps_the_copy(method, settings, world_dir, data,
                                                                          tmp_path):
    trainer = make(METHODS[method][0], *load_model(world_dir / "model"), data, tmp_path, **settings)
    assert trainer.ref_model is not None and not trainer.reference_tables

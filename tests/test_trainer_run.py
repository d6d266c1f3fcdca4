"""The trainers behave like a TRL run and their memory scales: the divergence guard keeps no copy of the weights and
reads the device once per optimizer step; UnSTAR's rounds are one run (one optimizer and schedule, continuous steps
and epochs, flos counted, the caller's args untouched, no round checkpoints left, right token counts and retain draws
with dataloader workers, a warning when the rounds end above the target); generation follows the prepared model;
a PEFT model that already carries an adapter gets that adapter as its reference, or a refusal."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback

from unstar_trl.data import load_unlearning_data
from unstar_trl.io import UsageError
from unstar_trl.method.trainers import AntiSampleConfig, AntiSampleTrainer, GradientAscentConfig, GradientAscentTrainer
from unstar_trl.method.trainers import NPOConfig, NPOTrainer
from unstar_trl.method.trainers.collators import REFERENCE_COLUMN
from unstar_trl.method.trainers.losses import sequence_log_probs
from unstar_trl.method.trainers import unstar_rounds
from unstar_trl.models import load_model


@pytest.fixture(scope="module")
def data(world_dir):
    return load_unlearning_data(world_dir / "data")


def unstar(world_dir, data, tmp_path, callbacks=None, **overrides):
    model, tokenizer = load_model(world_dir / "model")
    settings = {"per_device_train_batch_size": 16, "num_train_epochs": 1, "learning_rate": 2e-4, "max_rounds": 2,
                "generator": "template", "disable_tqdm": True, **overrides}
    args = AntiSampleConfig(output_dir=str(tmp_path / "out"), **settings)
    return AntiSampleTrainer(model=model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                             processing_class=tokenizer, callbacks=callbacks)


class Seen(TrainerCallback):
    """The optimizer and learning-rate schedule of each round's train(), and the learning rate of each step."""

    def __init__(self):
        self.optimizers, self.rates = [], []

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        self.optimizers.append((optimizer, lr_scheduler))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if "learning_rate" in logs:
            self.rates.append(logs["learning_rate"])


# ---- memory ---------------------------------------------------------------------------------------------------------

def test_the_divergence_guard_keeps_no_copy_of_the_weights(world_dir, data, tmp_path, monkeypatch):
    model, tokenizer = load_model(world_dir / "model")
    sizes = {parameter.numel() for parameter in model.parameters()}
    copies = []
    clone = torch.Tensor.clone
    monkeypatch.setattr(torch.Tensor, "clone",
                        lambda self, *args, **kwargs: copies.append(self.numel()) or clone(self, *args, **kwargs))
    trainer = GradientAscentTrainer(model=model, processing_class=tokenizer, train_dataset=data.forget,
                                    args=GradientAscentConfig(output_dir=str(tmp_path), max_steps=3,
                                                              learning_rate=1e-5, disable_tqdm=True))
    trainer.train()
    assert trainer.state.global_step == 3
    assert not [size for size in copies if size in sizes], "a weight was copied during training"


def test_the_guard_reads_the_device_once_per_optimizer_step(world_dir, data, tmp_path):
    model, tokenizer = load_model(world_dir / "model")
    trainer = GradientAscentTrainer(model=model, processing_class=tokenizer, train_dataset=data.forget,
                                    args=GradientAscentConfig(output_dir=str(tmp_path), max_steps=2,
                                                              per_device_train_batch_size=2,
                                                              gradient_accumulation_steps=3, learning_rate=1e-5,
                                                              disable_tqdm=True))
    gathers, gather = [], trainer.accelerator.gather
    trainer.accelerator.gather = lambda tensor: gathers.append(tensor.shape) or gather(tensor)
    trainer.train()
    assert len(gathers) == trainer.state.global_step == 2  # not one per term and micro-batch (6 micro-batches)
    assert trainer.trained_tokens > 0 and {"forget_nll", "entropy_share"} <= set(trainer.history[0])


# ---- one run --------------------------------------------------------------------------------------------------------

def test_rounds_share_one_optimizer_and_one_schedule(world_dir, data, tmp_path):
    seen = Seen()
    trainer = unstar(world_dir, data, tmp_path, callbacks=[seen], lr_scheduler_type="constant_with_warmup",
                     warmup_steps=3, learning_rate=1e-4)
    trainer.train()
    fitted = [log["steps"] for log in trainer.rounds if log["steps"]]
    assert len(fitted) == 2 and fitted[0] > 3, "two fitted rounds, the first longer than the warmup"
    assert len({id(optimizer) for optimizer, _ in seen.optimizers}) == 1
    assert len({id(scheduler) for _, scheduler in seen.optimizers}) == 1
    assert seen.rates[:3] == pytest.approx([0, 1e-4 / 3, 2e-4 / 3])  # the warmup once, then the rate it reached
    assert seen.rates[3:] == pytest.approx([1e-4] * len(seen.rates[3:]))


def test_a_restart_per_round_is_an_option(world_dir, data, tmp_path):
    seen = Seen()
    trainer = unstar(world_dir, data, tmp_path, callbacks=[seen], lr_scheduler_type="constant_with_warmup",
                     warmup_steps=3, learning_rate=1e-4, restart_optimizer_each_round=True)
    trainer.train()
    first = trainer.rounds[0]["steps"]
    assert first > 3 and len({id(optimizer) for optimizer, _ in seen.optimizers}) == 2
    assert seen.rates[first - 1] == pytest.approx(1e-4) and seen.rates[first] == 0  # the warmup again


def test_a_decaying_schedule_without_a_step_budget_is_refused(tmp_path):
    with pytest.raises(ValueError, match="lr_scheduler_type 'cosine' .* give max_steps"):
        AntiSampleConfig(output_dir=str(tmp_path), lr_scheduler_type="cosine")
    AntiSampleConfig(output_dir=str(tmp_path), lr_scheduler_type="cosine", max_steps=20)
    AntiSampleConfig(output_dir=str(tmp_path), lr_scheduler_type="cosine", restart_optimizer_each_round=True)


def test_the_log_history_is_one_run(world_dir, data, tmp_path):
    args = AntiSampleConfig(output_dir=str(tmp_path / "out"), per_device_train_batch_size=16, num_train_epochs=1,
                            learning_rate=2e-4, max_rounds=2, generator="template", disable_tqdm=True,
                            save_strategy="steps", save_steps=10_000)
    before = copy.deepcopy(args.to_dict())
    model, tokenizer = load_model(world_dir / "model")
    trainer = AntiSampleTrainer(model=model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                                processing_class=tokenizer)
    output = trainer.train()
    assert args.to_dict() == before, "the caller's args were changed"
    losses = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in losses] == list(range(1, output.global_step + 1))
    epochs = [entry["epoch"] for entry in losses]
    assert all(a < b for a, b in zip(epochs, epochs[1:])), epochs
    assert epochs[-1] == pytest.approx(sum(1 for log in trainer.rounds if log["steps"]))  # one epoch a round
    assert output.metrics["total_flos"] > 0 and trainer.state.total_flos == output.metrics["total_flos"]
    assert not list((tmp_path / "out").glob("round-*")), "save_steps 10000 was not reached: no round checkpoint"


def test_round_checkpoints_are_gone_when_the_run_ends(world_dir, data, tmp_path, monkeypatch):
    written, save = [], unstar_rounds.save_round_checkpoint

    def saving(trainer):  # the round checkpoints in place when a new one is saved, and the new one
        present = [path.name for path in sorted((tmp_path / "out").glob("round-*"))]
        written.append((present, save(trainer).name))
        return tmp_path / "out" / written[-1][1]

    monkeypatch.setattr(unstar_rounds, "save_round_checkpoint", saving)
    trainer = unstar(world_dir, data, tmp_path, save_strategy="epoch")
    trainer.train()
    assert written == [([], "round-1"), (["round-1"], "round-2")]  # the earlier one goes once the later is in place
    assert not list((tmp_path / "out").glob("round-*"))


def test_token_counts_and_retain_draws_with_two_dataloader_workers(world_dir, data, tmp_path):
    trainer = unstar(world_dir, data, tmp_path, dataloader_num_workers=2, per_device_train_batch_size=4)
    drawn, compute_loss = [], trainer.compute_loss

    def recording(model, inputs, *args, **kwargs):
        drawn.append(inputs["retain"]["input_ids"].tolist())
        return compute_loss(model, inputs, *args, **kwargs)

    trainer.compute_loss = recording
    trainer.train()
    assert trainer.trained_tokens > 0 and sum(log["tokens"] for log in trainer.rounds) == trainer.trained_tokens
    assert all(log["tokens"] > 0 for log in trainer.rounds if log["steps"])
    # the two workers make alternate batches: with one seed they drew the same retain pairs, batch for batch
    assert all(drawn[i] != drawn[i + 1] for i in range(0, len(drawn) - 1, 2))


def test_rounds_that_end_above_the_target_say_so_and_what_to_do(world_dir, data, tmp_path):
    trainer = unstar(world_dir, data, tmp_path, max_rounds=1, learning_rate=1e-7)
    output = trainer.train()
    assert output.metrics["forget_acc"] > 0
    (warning,) = [line for line in trainer.warnings if line.startswith("UnSTAR ended after round 1 with forget_acc")]
    assert "above forget_acc_target 0.0" in warning and "max_rounds" in warning and "learning rate" in warning


# ---- wrapped models -------------------------------------------------------------------------------------------------

def test_generation_and_stranger_answers_use_the_prepared_model(world_dir, data, tmp_path, monkeypatch):
    """Under FSDP the Trainer replaces trainer.model with the wrapped model at the first train(); here the first
    round's fit swaps in a copy the same way, and the next round must probe and write with it (the CPU cannot run
    FSDP itself)."""
    trainer = unstar(world_dir, data, tmp_path, generator="self", stranger_answers=True, follow_ups=0,
                     learning_rate=1e-5)
    captured = trainer.model
    fit = AntiSampleTrainer.fit

    def fit_then_wrap(self, round_index):
        output = fit(self, round_index)
        if round_index == 0:
            self.model = self.model_wrapped = copy.deepcopy(self.model)
            calls["captured"] = 0
        return output

    calls = {"captured": 0}

    def count(module, *args):  # a deep copy carries this hook along: count the captured model's own calls only
        calls["captured"] += module is captured

    captured.register_forward_hook(count)
    monkeypatch.setattr(AntiSampleTrainer, "fit", fit_then_wrap)
    trainer.train()
    assert trainer.model is not captured and len(trainer.rounds) == 3
    assert trainer.stranger_answers.model is trainer.model
    assert calls["captured"] == 0, "a later round probed or wrote with the model captured before wrapping"


def test_a_peft_model_with_its_own_adapter_needs_a_reference_adapter(world_dir, data, tmp_path):
    model, tokenizer = load_model(world_dir / "model")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False, task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)  # an adapter trained before (random here): it may hold the facts
    args = NPOConfig(output_dir=str(tmp_path), max_steps=2, learning_rate=1e-3, disable_tqdm=True)
    with pytest.raises(UsageError, match="already carries a PEFT adapter \\('default'\\).* set ref_adapter_name"):
        NPOTrainer(model=model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                   processing_class=tokenizer)
    with pytest.raises(UsageError, match="ref_adapter_name 'nope' is not an adapter of the model"):
        NPOTrainer(model=model, args=NPOConfig(output_dir=str(tmp_path), ref_adapter_name="nope"),
                   train_dataset=data.forget, retain_dataset=data.retain, processing_class=tokenizer)
    model.add_adapter("reference", lora)  # as model.load_adapter(PATH, adapter_name="reference") would
    state = model.state_dict()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if ".reference." in name:
                parameter.copy_(state[name.replace(".reference.", ".default.")])
    inputs = {"input_ids": torch.tensor([[5, 6, 7, 8]]), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    with torch.no_grad():
        start = model(**inputs).logits
        with model.disable_adapter():
            bare = model(**inputs).logits
    assert not torch.allclose(start, bare)
    args.ref_adapter_name = "reference"
    trainer = NPOTrainer(model=model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                         processing_class=tokenizer)
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])["forget"]
    on_the_fly, _ = sequence_log_probs(trainer.reference_logits(batch), batch["labels"])
    torch.testing.assert_close(batch[REFERENCE_COLUMN], on_the_fly)  # computed before training, through the adapter
    trainer.train()
    assert torch.allclose(trainer.reference_logits(inputs), start, atol=1e-5)  # the adapter as it came, frozen
    with torch.no_grad():
        assert not torch.allclose(trainer.model(**inputs).logits, start)  # while the trained one moved

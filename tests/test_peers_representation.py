"""The representation- and distillation-style peers: RMU's and UNDIAL's losses against values computed by hand on
tiny tensors, their configs' refusals, and a short real run of each (the tests' world model, TRL's trainer, the CLI)
that trains and writes."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from unstar_trl.cli import main
from unstar_trl.data import load_unlearning_data
from unstar_trl.io import UsageError
from unstar_trl.method.trainers import RMUConfig, RMUTrainer, UndialConfig
from unstar_trl.method.trainers.rmu import activation_mse, answer_positions, random_direction
from unstar_trl.method.trainers.undial import adjusted_targets, undial_loss
from unstar_trl.models import load_model

RECIPES = Path(__file__).resolve().parents[1] / "recipes"

# Two sequences over a vocabulary of 3 (as in test_losses.py). Sequence 0: prompt of 2 tokens, answer of 2.
# Sequence 1: prompt of 1, answer of 2, one padding position. The label at t is predicted at position t - 1.
LABELS = torch.tensor([[-100, -100, 1, 2], [-100, 0, 2, -100]])
PREDICTING = [[False, True, True, False], [True, True, False, False]]
"""The positions that predict an answer token."""


def softmax(row: list[float]) -> list[float]:
    total = sum(math.exp(value) for value in row)
    return [math.exp(value) / total for value in row]


# ---- RMU ------------------------------------------------------------------------------------------------------------

def test_rmu_steers_the_positions_that_predict_the_answer():
    assert answer_positions(LABELS).tolist() == PREDICTING


def test_rmu_forget_loss_is_zero_at_the_target_and_the_mean_squared_distance_elsewhere():
    target = torch.tensor([0.6, 0.8]) * 2.0  # c u with c = 2, |u| = 1
    mask = answer_positions(LABELS)
    at_target = torch.randn(2, 4, 2) * 5
    at_target[mask] = target  # the unmasked positions (prompt, padding, last) may hold anything
    assert activation_mse(at_target, target, mask).item() == pytest.approx(0.0, abs=1e-12)
    activations = at_target.clone()
    activations[0, 1] = torch.tensor([1.2, 1.6]) + torch.tensor([1.0, 3.0])  # squared distances 1 and 9: mean 5
    activations[1, 0] = torch.tensor([1.2, 1.6]) + torch.tensor([2.0, 0.0])  # 4 and 0: mean 2
    # sequence 0: positions 1 (5) and 2 (0), mean 2.5; sequence 1: positions 0 (2) and 1 (0), mean 1
    assert activation_mse(activations, target, mask).item() == pytest.approx((2.5 + 1.0) / 2, abs=1e-6)


def test_rmu_direction_is_a_fixed_random_unit_vector():
    direction = random_direction(64, seed=0)
    assert direction.norm().item() == pytest.approx(1.0, abs=1e-6) and (direction >= 0).all()
    assert torch.equal(direction, random_direction(64, seed=0))
    assert not torch.equal(direction, random_direction(64, seed=1))


@pytest.mark.parametrize("field, value, expected", [
    ("steering_coeff", 0.0, "steering_coeff must be above 0"),
    ("steering_coeff", float("nan"), "steering_coeff must be a finite number"),
    ("steer_layer", -1, "steer_layer must be at least 0"),
    ("trainable_params", "attention", "trainable_params must be 'mlp' or 'all'"),
    ("retain_loss_type", "mse", "retain_loss_type must be one of 'activations', 'nll', 'kl'"),
])
def test_rmu_config_refuses_bad_numbers(field, value, expected, tmp_path):
    with pytest.raises(ValueError, match=expected):
        RMUConfig(output_dir=str(tmp_path), **{field: value})


@pytest.mark.parametrize("field, value, expected", [
    ("beta", 0.0, "beta must be above 0"), ("beta", float("inf"), "beta must be a finite number"),
])
def test_undial_config_refuses_bad_numbers(field, value, expected, tmp_path):
    with pytest.raises(ValueError, match=expected):
        UndialConfig(output_dir=str(tmp_path), **{field: value})


@pytest.fixture(scope="module")
def data(world_dir):
    return load_unlearning_data(world_dir / "data")


def rmu(world_dir, data, tmp_path, **overrides):
    model, tokenizer = load_model(world_dir / "model")
    args = RMUConfig(output_dir=str(tmp_path), disable_tqdm=True, **overrides)
    return RMUTrainer(model=model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                      processing_class=tokenizer)


def test_rmu_refuses_a_layer_the_model_does_not_have(world_dir, data, tmp_path):
    with pytest.raises(UsageError, match=r"^steer_layer 2 is not a layer of this model: it has 2 decoder layers, 0 to "
                                         r"1$"):
        rmu(world_dir, data, tmp_path, steer_layer=2)


def test_rmu_trains_only_the_mlps_up_to_the_steered_layer_and_keeps_retain_activations(world_dir, data, tmp_path):
    trainer = rmu(world_dir, data, tmp_path, max_steps=4, learning_rate=3e-3, per_device_train_batch_size=8)
    layers = trainer.model.model.layers
    assert trainer.steered is layers[0]  # the middle of 2 layers: (2 - 1) // 2
    mlp = {f"model.layers.0.mlp.{name}" for name, _ in layers[0].mlp.named_parameters()}
    assert set(trainer.frozen) == mlp  # the reference is a copy of the trained weights alone
    assert {name for name, p in trainer.model.named_parameters() if p.requires_grad} == mlp
    start = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    moved = {name for name, p in trainer.model.named_parameters() if not torch.equal(p, start[name])}
    assert moved == mlp
    assert all(torch.equal(trainer.frozen[name], start[name]) for name in mlp)
    history = trainer.history
    assert history[0]["retain_mse"] == pytest.approx(0.0, abs=1e-9)  # the first step starts from the frozen weights
    assert history[-1]["forget_loss"] < history[0]["forget_loss"]
    # the frozen activations are the original model's, whatever the trained weights are now
    original = load_model(world_dir / "model")[0]
    batch = trainer.data_collator([trainer.train_dataset[0]])["forget"]
    with torch.no_grad():
        expected = original(**{k: batch[k] for k in ("input_ids", "attention_mask")}, output_hidden_states=True)
    torch.testing.assert_close(trainer.frozen_activations(batch), expected.hidden_states[1])


def test_rmu_all_trains_every_weight_against_a_frozen_copy_of_all(world_dir, data, tmp_path):
    trainer = rmu(world_dir, data, tmp_path, max_steps=2, learning_rate=1e-3, trainable_params="all")
    assert set(trainer.frozen) == {name for name, _ in trainer.model.named_parameters()}
    trainer.train()
    assert trainer.history[0]["retain_mse"] == pytest.approx(0.0, abs=1e-9)
    assert trainer.history[1]["retain_mse"] > 0


def test_rmu_under_peft_trains_the_adapter_inside_the_mlps(world_dir, data, tmp_path):
    from peft import LoraConfig

    model, tokenizer = load_model(world_dir / "model")
    args = RMUConfig(output_dir=str(tmp_path), disable_tqdm=True, max_steps=2, learning_rate=1e-3)
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM")
    trainer = RMUTrainer(model=model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                         processing_class=tokenizer, peft_config=lora)
    trained = {name for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert trained and all(".layers.0.mlp.down_proj.lora_" in name for name in trained)
    assert set(trainer.frozen) == trained  # the reference: the adapter's starting weights, not a model
    trainer.train()
    assert trainer.history[0]["retain_mse"] == pytest.approx(0.0, abs=1e-9)
    no_mlp = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM")
    with pytest.raises(UsageError, match="none of them trains"):
        RMUTrainer(model=load_model(world_dir / "model")[0], args=args, train_dataset=data.forget,
                   retain_dataset=data.retain, processing_class=tokenizer, peft_config=no_mlp)


# ---- UNDIAL ---------------------------------------------------------------------------------------------------------

REF = torch.tensor([
    [[0.0, 0.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, 3.0], [5.0, 5.0, 5.0]],
    [[2.0, 0.0, 1.0], [0.0, 1.0, 0.0], [9.0, -9.0, 4.0], [7.0, 7.0, -7.0]],
])


def test_undial_target_is_the_reference_with_the_true_token_lowered():
    target = adjusted_targets(REF, LABELS, beta=10.0)
    # sequence 0, position 1 predicts label 1: softmax([1, 2 - 10, 0])
    assert target[0, 1].tolist() == pytest.approx(softmax([1.0, -8.0, 0.0]), abs=1e-6)
    # sequence 1, position 0 predicts label 0: softmax([2 - 10, 0, 1])
    assert target[1, 0].tolist() == pytest.approx(softmax([-8.0, 0.0, 1.0]), abs=1e-6)
    # the other tokens keep the reference's ratios; the true one loses exactly beta in log space
    log_ratio = target.log() - torch.log_softmax(REF[:, :-1], dim=-1)
    for seq, pos in ((0, 1), (0, 2), (1, 0), (1, 1)):
        true = LABELS[seq, pos + 1].item()
        others = [v for v in range(3) if v != true]
        assert log_ratio[seq, pos, others[0]].item() == pytest.approx(log_ratio[seq, pos, others[1]].item(), abs=1e-5)
        assert (log_ratio[seq, pos, others[0]] - log_ratio[seq, pos, true]).item() == pytest.approx(10.0, abs=1e-4)
    # positions that predict no answer token keep the reference
    torch.testing.assert_close(target[0, 0], torch.softmax(REF[0, 0], -1))
    torch.testing.assert_close(target[1, 2], torch.softmax(REF[1, 2], -1))


def test_undial_loss_is_zero_at_the_adjusted_target_and_a_kl_elsewhere():
    beta = 3.0
    student = REF.clone()
    for seq, pos in ((0, 1), (0, 2), (1, 0), (1, 1)):
        student[seq, pos, LABELS[seq, pos + 1]] -= beta
    student[0, 0] = torch.tensor([40.0, -3.0, 0.0])  # masked positions do not count
    assert undial_loss(student, REF, LABELS, beta).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros_like(REF)

    def kl_to_uniform(row: list[float], true: int) -> float:
        row = [value - (beta if index == true else 0.0) for index, value in enumerate(row)]
        return sum(p * math.log(p / (1 / 3)) for p in softmax(row))

    seq0 = (kl_to_uniform([1, 2, 0], 1) + kl_to_uniform([0, 0, 3], 2)) / 2
    seq1 = (kl_to_uniform([2, 0, 1], 0) + kl_to_uniform([0, 1, 0], 2)) / 2
    assert undial_loss(uniform, REF, LABELS, beta).item() == pytest.approx((seq0 + seq1) / 2, abs=1e-6)


def test_undial_at_the_reference_pushes_the_true_token_down_and_the_others_up():
    student = REF.clone().requires_grad_(True)
    undial_loss(student, REF, LABELS, beta=10.0).backward()
    grad = student.grad[0, 1]  # predicts label 1; descent moves the logits by -grad
    assert grad[1] > 0 and grad[0] < 0 and grad[2] < 0


# ---- real runs ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("method, term", [("rmu", "retain_mse"), ("undial", "retain_nll")])
def test_recipe_run_trains_and_writes(method, term, world_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["unlearn", "--config", str(RECIPES / f"world_{method}.yaml"), "--model_name_or_path",
                 str(world_dir / "model"), "--data_dir", str(world_dir / "data"), "--output_dir", str(out),
                 "--max_steps", "3"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "unlearn_report.json").read_text())
    assert report["steps"] == 3 and [entry["step"] for entry in report["history"]] == [1, 2, 3]
    assert all(term in entry and "forget_loss" in entry for entry in report["history"])
    trained, _ = load_model(out)
    original, _ = load_model(world_dir / "model")
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), original.state_dict().values()))

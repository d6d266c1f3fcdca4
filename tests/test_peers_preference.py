"""AltPO and DF-MCQ: their losses on hand-made tensors, the batches they train on, the alternatives and options
UnSTAR's writer gives them (never the truth, never an evaluation distractor), their configs' refusals, and one short
real run of each through `unstar unlearn`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from unstar_trl.cli import main
from unstar_trl.data import load_unlearning_data
from unstar_trl.io import UsageError
from unstar_trl.method.alternatives import written_alternatives
from unstar_trl.method.trainers import AltPOConfig, AltPOTrainer, DFMCQConfig, DFMCQTrainer
from unstar_trl.method.trainers.collators import COMPANION_LOGITS, CompanionCollator
from unstar_trl.method.trainers.losses import flattening_loss, preference_loss
from unstar_trl.models import load_model
from unstar_trl.text import normalize

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.fixture(scope="module")
def data(world_dir):
    return load_unlearning_data(world_dir / "data")


# ---- the losses on hand-made tensors -------------------------------------------------------------------------------
def test_preference_loss_by_hand():
    same = preference_loss(torch.tensor([-2.0]), torch.tensor([-3.0]), torch.tensor([-4.0]), torch.tensor([-5.0]),
                           beta=0.1)  # both answers gained 1 nat over the reference: no preference yet
    assert same.item() == pytest.approx(20 * math.log(2), rel=1e-6)  # -(2 / 0.1) log sigmoid(0)
    # the alternative gained 2 nats, the truth lost 2: margin 4, beta 0.5 -> -(2 / 0.5) log sigmoid(2)
    prefers_alt = preference_loss(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-5.0]),
                                  torch.tensor([-3.0]), beta=0.5)
    assert prefers_alt.item() == pytest.approx(4 * math.log(1 + math.exp(-2)), rel=1e-6)
    assert prefers_alt < preference_loss(torch.zeros(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), beta=0.5)
    prefers_truth = preference_loss(torch.tensor([-5.0]), torch.tensor([-3.0]), torch.tensor([-1.0]),
                                    torch.tensor([-3.0]), beta=0.5)
    assert prefers_truth.item() == pytest.approx(4 * math.log(1 + math.exp(2)), rel=1e-6)


def test_preference_loss_pushes_the_truth_down_and_the_alternative_up():
    win, lose = torch.tensor([-2.0], requires_grad=True), torch.tensor([-2.0], requires_grad=True)
    preference_loss(win, torch.tensor([-2.0]), lose, torch.tensor([-2.0]), beta=0.1).backward()
    assert win.grad.item() < 0 < lose.grad.item()  # descent raises log pi(alternative), lowers log pi(truth)


def test_flattening_loss_by_hand():
    equal = torch.log(torch.tensor([[0.1, 0.1, 0.1, 0.1, 0.1], [0.3, 0.3, 0.3, 0.3, 0.3]]))
    assert flattening_loss(equal).item() == pytest.approx(0.0, abs=1e-6)  # equal options: already flat
    # two options at 0.08 and 0.02 of the sequence mass: p = (0.8, 0.2) over the options, KL(U || p) =
    # 0.5 ln(0.5 / 0.8) + 0.5 ln(0.5 / 0.2) = 0.5 ln(1.5625)
    skewed = torch.log(torch.tensor([[0.08, 0.02]]))
    assert flattening_loss(skewed).item() == pytest.approx(0.5 * math.log(1.5625), rel=1e-5)
    rows = torch.cat([torch.log(torch.tensor([[0.5, 0.5]])), skewed])
    assert flattening_loss(rows).item() == pytest.approx(0.25 * math.log(1.5625), rel=1e-5)  # the mean of rows


def test_flattening_loss_pushes_the_favourite_down():
    options = torch.log(torch.tensor([[0.6, 0.2, 0.2]])).requires_grad_(True)
    flattening_loss(options).backward()
    assert options.grad[0, 0] > 0 > options.grad[0, 1]  # descent lowers the likely option, raises the others


# ---- the batches ---------------------------------------------------------------------------------------------------
def pair(*ids):
    return {"input_ids": list(ids), "labels": [-100, *ids[1:]]}


def test_companion_collator_keeps_the_order_of_carried_pairs():
    features = [{**pair(1, 2), "options": [pair(1, 3), pair(1, 4, 5)]},
                {**pair(6, 7, 8), "options": [pair(6, 9), pair(6, 10)]}]
    batch = CompanionCollator(pad_token_id=0)(features)["forget"]
    assert batch["input_ids"].tolist() == [[1, 2, 0], [6, 7, 8]]
    assert batch["options"]["input_ids"].tolist() == [[1, 3, 0], [1, 4, 5], [6, 9, 0], [6, 10, 0]]
    assert batch["options"]["labels"][1].tolist() == [-100, 4, 5]
    single = CompanionCollator(pad_token_id=0)([{**pair(1, 2), "alternate": pair(1, 3, 4)}])["forget"]
    assert single["alternate"]["input_ids"].tolist() == [[1, 3, 4]]
    with pytest.raises(ValueError, match="options"):
        CompanionCollator(pad_token_id=0)([features[0], {**pair(6, 7), "options": [pair(6, 9)]}])


def make(trainer_class, config_class, world_dir, data, tmp_path, **overrides):
    model, tokenizer = load_model(world_dir / "model")
    args = config_class(output_dir=str(tmp_path), disable_tqdm=True, **overrides)
    return trainer_class(model=model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                         processing_class=tokenizer)


def completion(tokenizer, batch, row):
    return tokenizer.decode(batch["input_ids"][row][batch["labels"][row] != -100]).removesuffix(tokenizer.eos_token)


def test_altpo_pairs_the_truth_with_each_alternative(world_dir, data, tmp_path):
    trainer = make(AltPOTrainer, AltPOConfig, world_dir, data, tmp_path, n_alternatives=3)
    tokenizer, record = trainer.processing_class, data.forget[0]
    alternatives = trainer.alternatives[record["id"]]
    assert len(trainer.train_dataset) == sum(map(len, trainer.alternatives.values())) <= 3 * len(data.forget)
    batch = trainer.data_collator([trainer.train_dataset[index] for index in range(len(alternatives))])["forget"]
    assert {completion(tokenizer, batch, row).strip() for row in range(len(alternatives))} == {record["answer"]}
    assert [completion(tokenizer, batch["alternate"], row).strip() for row in range(len(alternatives))] == alternatives
    prompt = tokenizer.decode(batch["alternate"]["input_ids"][0][batch["alternate"]["labels"][0] == -100])
    assert prompt.startswith(f"Question: {record['question']}\nAnswer:")
    assert trainer.ref_model is None and trainer.time_split.seconds["generate"] > 0  # (the reference: precomputed)


def test_dfmcq_asks_the_truth_and_its_options(world_dir, data, tmp_path):
    trainer = make(DFMCQTrainer, DFMCQConfig, world_dir, data, tmp_path, n_options=4)
    tokenizer = trainer.processing_class
    assert len(trainer.train_dataset) == len(data.forget)  # one row per question, its options beside it
    batch = trainer.data_collator([trainer.train_dataset[0], trainer.train_dataset[1]])["forget"]
    assert batch["options"]["input_ids"].shape[0] == 2 * 3
    for row, record in enumerate(data.forget[:2]):
        assert completion(tokenizer, batch, row).strip() == record["answer"]
        options = [completion(tokenizer, batch["options"], 3 * row + j).strip() for j in range(3)]
        assert options == trainer.wrong_options[record["id"]]
    assert trainer.args.retain_loss_type == "kl"  # the paper's retain term, the reference's logits on the retain rows
    assert trainer.ref_model is None and "retain" in trainer.reference_tables  # (a table: smaller than a copy here)


@pytest.mark.parametrize("trainer_class,config_class,key", [(AltPOTrainer, AltPOConfig, "alternate"),
                                                              (DFMCQTrainer, DFMCQConfig, "options")])
def test_the_forget_rows_and_their_companions_are_read_in_one_forward_pass(trainer_class, config_class, key,
                                                                           world_dir, data, tmp_path):
    """One forward pass over the truths and the rows they carry (as SFTTrainer runs one per batch, for memory): each
    row's logits are those of its own batch's forward, at every position of that batch."""
    trainer = make(trainer_class, config_class, world_dir, data, tmp_path)
    rows = trainer.train_dataset
    batch = trainer.data_collator([rows[index] for index in range(0, len(rows), max(1, len(rows) // 6))])["forget"]
    model = trainer.model.eval()
    calls = []
    model.register_forward_hook(lambda module, args, kwargs, output: calls.append(kwargs["input_ids"].shape),
                                with_kwargs=True)
    with torch.no_grad():
        logits = trainer.forget_logits(model, batch)
        assert len(calls) == 1 and calls[0][0] == len(batch["input_ids"]) + len(batch[key]["input_ids"])
        assert batch["input_ids"].shape[1] != batch[key]["input_ids"].shape[1]  # the two were padded apart
        torch.testing.assert_close(logits, trainer.logits(model, batch), rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(batch[key][COMPANION_LOGITS], trainer.logits(model, batch[key]), rtol=1e-4,
                                   atol=1e-4)


# ---- the alternatives ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("generator", ["self", "template"])
def test_alternatives_are_never_the_truth_nor_an_evaluation_distractor(world_dir, data, generator):
    model, tokenizer = load_model(world_dir / "model")
    found = written_alternatives(data.forget, 5, generator, model, tokenizer, seed=0, least=5)
    again = written_alternatives(data.forget, 5, generator, model, tokenizer, seed=0, least=5)
    assert found == again  # seeded
    for record in data.forget:
        assert {sample.question for sample in found[record["id"]]} == {record["question"]}
        written = [normalize(sample.wrong_answer) for sample in found[record["id"]]]
        assert len(written) == len(set(written)) == 5
        assert normalize(record["answer"]) not in written
        assert not set(written) & {normalize(distractor) for distractor in record["eval_distractors"]}


def test_a_record_left_short_is_refused_by_name(world_dir, data):
    model, tokenizer = load_model(world_dir / "model")
    bare = [{**data.forget[0], "perturbed_answers": []}, *data.forget[1:3]]
    with pytest.raises(UsageError, match=bare[0]["id"]):
        written_alternatives(bare, 4, "template", model, tokenizer, seed=0, least=4)


# ---- the configs ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("config_class, field, value", [
    (AltPOConfig, "beta", 0.0), (AltPOConfig, "beta", math.nan), (AltPOConfig, "n_alternatives", 0),
    (AltPOConfig, "generator", "no-such-folder"), (DFMCQConfig, "n_options", 1),
    (DFMCQConfig, "generator", "no-such-folder"), (DFMCQConfig, "retain_weight", -1.0),
])
def test_configs_refuse_bad_numbers(config_class, field, value, tmp_path):
    with pytest.raises(ValueError, match=field):
        config_class(output_dir=str(tmp_path), **{field: value})


# ---- a short real run ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["altpo", "dfmcq"])
def test_a_short_run_trains_and_writes(method, world_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["unlearn", "--config", str(RECIPES / f"world_{method}.yaml"), "--model_name_or_path",
                 str(world_dir / "model"), "--data_dir", str(world_dir / "data"), "--output_dir", str(out),
                 "--max_steps", "3"])
    assert code == 0, capsys.readouterr().err[-2000:]
    report = json.loads((out / "unlearn_report.json").read_text())
    assert report["method"] == method and report["steps"] == 3
    assert [entry["step"] for entry in report["history"]] == [1, 2, 3]
    assert all({"forget_loss", "forget_nll", "retain_loss"} <= set(entry) for entry in report["history"])
    assert report["time_split"]["generate"] > 0  # the alternatives / options were written by the model
    audit = [json.loads(line) for line in (out / "anti_samples.jsonl").read_text().splitlines()] \
        if method == "altpo" else []  # the planted probe reads what AltPO preferred over the truth
    assert (method == "altpo") == bool(audit) == (out / "anti_samples.jsonl").is_file()
    assert all(sample["rationale"] == "" and sample["wrong_answer"] for sample in audit)
    trained = load_model(out)[0].state_dict()
    before = load_model(world_dir / "model")[0].state_dict()
    assert any(not torch.equal(trained[name], before[name]) for name in before)

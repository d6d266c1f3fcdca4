"""AntiSampleTrainer on the real world model: it forgets, keeps the rest, never trains on the truth, and is a drop-in
TRL trainer (full fine-tuning and LoRA, template and self-taught generators, targeted mode) whose rounds are one run
and whose failures are loud."""

from __future__ import annotations

import json
import random
import re
from collections import Counter

import pytest
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

from unstar_trl import AntiSampleConfig, AntiSampleTrainer
from unstar_trl.data import load_unlearning_data
from unstar_trl.text import contains_answer
from unstar_trl.evaluation.knowledge import knowledge_report
from unstar_trl.method.anti_samples import AntiSample
from unstar_trl.method.trainers.time_split import PHASES
from unstar_trl.method.trainers.unstar import ANTI_SAMPLES_FILE, DROPPED_FILE, spread_over_facts
from unstar_trl.method.trainers.unstar_rounds import NoAntiSamplesError, answers_known, still_known
from unstar_trl.method.generators import make_generator


@pytest.fixture()
def model_and_tokenizer(world_dir):
    model_dir = world_dir / "model"
    return AutoModelForCausalLM.from_pretrained(model_dir), AutoTokenizer.from_pretrained(model_dir)


@pytest.fixture(scope="module")
def data(world_dir):
    return load_unlearning_data(world_dir / "data")


def unlearn(model, tokenizer, data, tmp_path, *, targeted=False, peft_config=None, **overrides):
    settings = {"per_device_train_batch_size": 16, "num_train_epochs": 2, "learning_rate": 1e-3, **overrides}
    args = AntiSampleConfig(output_dir=str(tmp_path), **settings)
    trainer = AntiSampleTrainer(model=model, args=args, train_dataset=data.targeted if targeted else data.forget,
                                retain_dataset=data.targeted_retain if targeted else data.retain,
                                processing_class=tokenizer, peft_config=peft_config)
    trainer.train()
    return trainer


def test_template_generator_forgets_and_keeps_retain(model_and_tokenizer, data, tmp_path):
    model, tokenizer = model_and_tokenizer
    before = knowledge_report(model, tokenizer, data, "Question: {question}\nAnswer:")
    trainer = unlearn(model, tokenizer, data, tmp_path, generator="template")
    after = knowledge_report(trainer.model, tokenizer, data, "Question: {question}\nAnswer:")
    assert before["forget_acc"] >= 0.9
    assert after["forget_acc"] <= 0.05
    assert after["paraphrase_acc"] <= 0.10
    assert after["retain_trained_acc"] >= 0.9 * before["retain_trained_acc"]  # (trained on all of data.retain)
    assert trainer.rounds[0]["known"] == len(data.forget) and trainer.rounds[-1]["known"] == 0
    assert trainer.state.global_step > 0 and {"anti_sample_nll", "retain_loss"} <= set(trainer.history[0])


def test_audit_file_holds_every_kept_anti_sample_and_none_names_the_truth(model_and_tokenizer, data, tmp_path):
    model, tokenizer = model_and_tokenizer
    trainer = unlearn(model, tokenizer, data, tmp_path, max_rounds=1)
    rows = [json.loads(line) for line in (tmp_path / ANTI_SAMPLES_FILE).read_text().splitlines()]
    assert len(rows) == len(trainer.anti_samples) > 0
    answers = {record["id"]: record["answer"] for record in data.forget}
    heldout = {record["id"]: record["paraphrased_questions"][0] for record in data.forget}
    for row in rows:
        assert {"question", "wrong_answer", "rationale", "round", "source_id", "generator"} <= set(row)
        assert not contains_answer(f"{row['wrong_answer']} {row['rationale']}", answers[row["source_id"]])
        assert row["question"] != heldout[row["source_id"]]


def test_self_taught_generator_runs_end_to_end(model_and_tokenizer, data, tmp_path):
    model, tokenizer = model_and_tokenizer
    trainer = unlearn(model, tokenizer, data, tmp_path, generator="self", max_rounds=2)
    after = knowledge_report(trainer.model, tokenizer, data, "Question: {question}\nAnswer:")
    assert {sample.generator for sample in trainer.anti_samples} == {"self_taught"}
    assert trainer.rounds[0]["made"] > 0 and trainer.rounds[0]["kept"] > 0
    assert after["forget_acc"] <= 0.5


@pytest.mark.parametrize("refit", ["all", "round", "replay"])
def test_refit_fits_every_kept_anti_sample_or_the_rounds_with_or_without_a_replay(model_and_tokenizer, data, tmp_path,
                                                                                  monkeypatch, refit):
    model, tokenizer = model_and_tokenizer
    fitted, fit = [], AntiSampleTrainer.fit

    def recording_fit(self, round_index):
        output = fit(self, round_index)
        fitted.append((round_index, len(self.train_dataset)))
        return output

    monkeypatch.setattr(AntiSampleTrainer, "fit", recording_fit)
    # a low learning rate leaves facts known after the first round, so that a second one is fitted
    trainer = unlearn(model, tokenizer, data, tmp_path, generator="template", refit=refit, max_rounds=2,
                      learning_rate=1e-5, num_train_epochs=1, replay_ratio=0.5)
    made = Counter(sample.round for sample in trainer.anti_samples)
    assert [index for index, _ in fitted] == [0, 1]
    replayed = min(round(0.5 * made[1]), made[0])
    expected = {"all": [made[0], made[0] + made[1]], "round": [made[0], made[1]],
                "replay": [made[0], made[1] + replayed]}[refit]
    assert [size for _, size in fitted] == expected
    assert [log["fitted"] for log in trainer.rounds[:2]] == expected


def test_each_round_logs_its_seconds_by_phase_and_its_tokens(model_and_tokenizer, data, tmp_path):
    model, tokenizer = model_and_tokenizer
    trainer = unlearn(model, tokenizer, data, tmp_path, generator="template", max_rounds=2, learning_rate=1e-5,
                      num_train_epochs=1)
    assert [log["steps"] > 0 for log in trainer.rounds] == [True, True, False]
    for log in trainer.rounds:
        assert set(log["seconds"]) == set(PHASES) and (log["tokens"] > 0) == (log["steps"] > 0)
        assert (log["seconds"]["fit"] > 0) == (log["steps"] > 0) and log["seconds"]["probe"] > 0
    assert sum(log["tokens"] for log in trainer.rounds) == trainer.trained_tokens
    for phase in PHASES:  # the rounds share out the run's time (each round's figure rounded to milliseconds), but
        # for the bookkeeping between them (saving the audit), which is the run's "other" alone
        spent, total = sum(log["seconds"][phase] for log in trainer.rounds), trainer.time_split.seconds[phase]
        tolerance = 0.001 * len(trainer.rounds)
        assert spent <= total + tolerance if phase == "other" else spent == pytest.approx(total, abs=tolerance)


def test_a_replay_spreads_over_the_earlier_facts():
    samples = [AntiSample(fact, f"q{index}", "wrong", "", 0, "template") for fact, count in
               (("a", 6), ("b", 2), ("c", 1)) for index in range(count)]
    drawn = spread_over_facts(samples, 5, random.Random(0))
    assert len(drawn) == len(set(drawn)) == 5
    assert Counter(sample.source_id for sample in drawn) == {"a": 2, "b": 2, "c": 1}
    assert sorted(spread_over_facts(samples, 20, random.Random(0)), key=samples.index) == samples


def test_a_follow_up_counts_only_when_the_model_answers_it_with_the_facts_answer(model_and_tokenizer, data,
                                                                                 tmp_path):
    model, tokenizer = model_and_tokenizer
    trainer = AntiSampleTrainer(model=model, processing_class=tokenizer, train_dataset=data.forget,
                                args=AntiSampleConfig(output_dir=str(tmp_path), generator="self", follow_ups=2,
                                                      retain_weight=0.0))
    fact = next(record for record in data.forget if answers_known(trainer, trainer.model, [record]) == [True])
    other = next(record for record in data.forget if record["subject"] == fact["subject"] and record != fact)
    forgotten = {**fact, "question": f"Is {fact['subject']} a person?", "paraphrased_questions": []}
    trainer.forget_records = [forgotten]
    generator = make_generator("self", trainer.args, trainer.model, tokenizer)
    same = {**forgotten, "question": fact["question"]}
    elsewhere = {**forgotten, "question": other["question"]}  # names the subject, asks another of its facts
    generator.follow_ups = lambda records, per_record, round: [same, elsewhere]
    assert answers_known(trainer, trainer.model, [forgotten, {**other, "answer": fact["answer"]}]) == [False, False]
    known, asked = still_known(trainer, trainer.model, generator)
    assert asked == 3 and known == [same]


def test_lora_with_npo_reversed_term(model_and_tokenizer, data, tmp_path):
    model, tokenizer = model_and_tokenizer
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj", "up_proj", "down_proj"],
                      task_type="CAUSAL_LM")
    trainer = unlearn(model, tokenizer, data, tmp_path, peft_config=lora, max_rounds=1, learning_rate=5e-3,
                      reversed_loss_weight=0.5, reversed_loss_type="npo")
    assert trainer.ref_model is None  # the reference is the adapter-disabled model
    assert {"reversed_loss", "forget_nll"} <= set(trainer.history[0])
    after = knowledge_report(trainer.model, tokenizer, data, "Question: {question}\nAnswer:")
    assert after["forget_acc"] < 0.9


def test_targeted_mode_removes_the_association_and_keeps_its_siblings(model_and_tokenizer, data, tmp_path):
    model, tokenizer = model_and_tokenizer
    before = knowledge_report(model, tokenizer, data, "Question: {question}\nAnswer:")
    trainer = unlearn(model, tokenizer, data, tmp_path, targeted=True, generator="template", num_train_epochs=3,
                      per_device_train_batch_size=8, learning_rate=5e-4)
    after = knowledge_report(trainer.model, tokenizer, data, "Question: {question}\nAnswer:")
    assert after["targeted_acc"] <= 0.05
    # never trained on; 6 held-out siblings on the tests' world: none lost on the seed-0 and seed-1 worlds, one on
    # seed 2 (0.83), so one may go, two may not
    assert after["sibling_heldout_acc"] >= before["sibling_heldout_acc"] - 0.2
    assert after["forget_acc"] >= 0.9 * before["forget_acc"]  # only the targeted associations go


def test_targeted_mode_refuses_siblings_missing_from_retain(model_and_tokenizer, data, tmp_path):
    model, tokenizer = model_and_tokenizer
    with pytest.raises(ValueError, match="none of its siblings"):
        AntiSampleTrainer(model=model, args=AntiSampleConfig(output_dir=str(tmp_path)), train_dataset=data.targeted,
                          retain_dataset=data.retain[:1], processing_class=tokenizer)


# ---- one run, loud failures -------------------------------------------------------------------------------------

class LogRecorder(TrainerCallback):
    """What a report_to integration sees: the step and the figures of every log."""

    def __init__(self):
        self.logs: list[tuple[int, dict]] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


def test_rounds_are_one_run_with_one_step_counter(model_and_tokenizer, data, tmp_path):
    model, tokenizer = model_and_tokenizer
    recorder = LogRecorder()
    args = AntiSampleConfig(output_dir=str(tmp_path), per_device_train_batch_size=16, num_train_epochs=1,
                            learning_rate=2e-4, max_rounds=3)
    trainer = AntiSampleTrainer(model=model, args=args, train_dataset=data.forget, retain_dataset=data.retain,
                                processing_class=tokenizer, callbacks=[recorder])
    output = trainer.train()
    fitted = [log for log in trainer.rounds if log["steps"]]
    assert len(fitted) >= 2, "too few rounds to look across them"
    assert output.global_step == trainer.state.global_step == sum(log["steps"] for log in trainer.rounds)
    losses = [(step, logs["loss"]) for step, logs in recorder.logs if "loss" in logs]
    assert [step for step, _ in losses] == list(range(1, output.global_step + 1))  # each step logged once, in order
    steps = [step for step, _ in recorder.logs]
    assert steps == sorted(steps) and [entry["step"] for entry in trainer.state.log_history] == steps
    per_round = [logs for _, logs in recorder.logs if "forget_acc" in logs]
    assert [logs["round"] for logs in per_round] == [log["round"] for log in trainer.rounds]
    assert [logs["kept"] for logs in per_round] == [log["kept"] for log in trainer.rounds]
    assert all(f"dropped_{reason}" in per_round[0] for reason in trainer.rounds[0]["dropped"])
    assert output.metrics["rounds"] == len(fitted) and output.metrics["forget_acc"] == trainer.rounds[-1]["forget_acc"]
    assert output.training_loss == pytest.approx(sum(loss for _, loss in losses) / len(losses), rel=1e-3)


def test_a_round_that_keeps_no_anti_sample_is_a_clear_error(model_and_tokenizer, data, tmp_path):
    model, tokenizer = model_and_tokenizer
    forget = [{**record, "perturbed_answers": [f"{record['answer']} Minor"], "paraphrased_questions": []}
              for record in data.forget]  # every wrong answer names the true one
    trainer = AntiSampleTrainer(model=model, args=AntiSampleConfig(output_dir=str(tmp_path), follow_ups=0,
                                                                   retain_weight=0.0, generator="template"),
                                train_dataset=forget, processing_class=tokenizer)
    with pytest.raises(NoAntiSamplesError, match=rf"round 0: the generator made {len(forget)} anti-samples for the "
                       rf"{len(forget)} facts still known and the filters dropped every one \(leaks_answer "
                       rf"{len(forget)}; see anti_samples_dropped.jsonl\)"):
        trainer.train()
    dropped = [json.loads(line) for line in (tmp_path / DROPPED_FILE).read_text().splitlines()]
    assert len(dropped) == len(forget) and {row["reason"] for row in dropped} == {"leaks_answer"}


def test_nothing_known_is_a_warning_that_shows_the_prompt(model_and_tokenizer, data, tmp_path):
    """A model that answers nothing under its prompt format is warned about, with the prompt, and not trained. The
    world model may guess some facts under another format (how many hangs on its floats), so here its output layer
    is zeroed: every logit ties, greedy decoding writes token 0 (<pad>, decoded as nothing), no fact is known."""
    import torch

    model, tokenizer = model_and_tokenizer
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    args = AntiSampleConfig(output_dir=str(tmp_path), prompt_template="Tell me, {question}", retain_weight=0.0)
    trainer = AntiSampleTrainer(model=model, args=args, train_dataset=data.forget, processing_class=tokenizer)
    output = trainer.train()
    assert trainer.rounds[0]["known"] == 0 and len(trainer.rounds) == 1
    assert output.global_step == 0 and output.metrics["forget_acc"] == 0
    (warning,) = trainer.warnings
    assert warning.startswith(f"0/{len(data.forget)} forget facts are known under the prompt format "
                              "'Tell me, {question}'") and f"Tell me, {data.forget[0]['question']}" in warning


@pytest.mark.parametrize("field, value, message", [
    ("forget_acc_target", -1, "forget_acc_target must be between 0.0 and 1.0, got -1"),
    ("forget_acc_target", 1.5, "forget_acc_target must be between 0.0 and 1.0, got 1.5"),
    ("n_wrong_answers", 0, "n_wrong_answers must be at least 1, got 0"),
    ("generation_top_p", 0, "generation_top_p must be positive, got 0"),
    ("generator", "no/such/teacher", "generator must be 'auto', 'self', 'template' or a teacher model folder"),
    ("prompt_template", "Q: A:", "prompt_template 'Q: A:' must hold a {question} slot"),
    ("eval_strategy", "steps", "eval_strategy 'steps': unlearning trainers evaluate no loss during training"),
])
def test_config_fields_are_checked(field, value, message, tmp_path):
    with pytest.raises(ValueError, match=re.escape(message)):
        AntiSampleConfig(output_dir=str(tmp_path), **{field: value})


def test_eval_dataset_is_refused_and_conversations_are_taken_as_facts(model_and_tokenizer, data, tmp_path):
    from datasets import Dataset

    from unstar_trl.data import DataError

    model, tokenizer = model_and_tokenizer
    args = AntiSampleConfig(output_dir=str(tmp_path), retain_weight=0.0)
    with pytest.raises(ValueError, match="^eval_dataset: unlearning trainers do not evaluate a loss"):
        AntiSampleTrainer(model=model, args=args, train_dataset=data.forget, eval_dataset=data.retain,
                          processing_class=tokenizer)
    turns = [[{"role": "user", "content": r["question"]}, {"role": "assistant", "content": r["answer"]}]
             for r in data.forget]
    conversations = Dataset.from_list([{"prompt": turn[:1], "completion": turn[1:]} for turn in turns])
    trainer = AntiSampleTrainer(model=model, args=args, train_dataset=conversations, processing_class=tokenizer)
    assert [(r["question"], r["answer"]) for r in trainer.forget_records] == [
        (r["question"], r["answer"]) for r in data.forget]
    with pytest.raises(DataError, match=r"^train_dataset row 1: a conversation with roles \['user', 'user'\]"):
        AntiSampleTrainer(model=model, args=args, train_dataset=[{"messages": [turns[0][0], turns[1][0]]}],
                          processing_class=tokenizer)

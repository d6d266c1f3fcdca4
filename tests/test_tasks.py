"""The unstar lm-eval tasks: metric functions on constructed cases, the views they read, and the real `lm_eval` CLI
on the test world's model checked against a direct count."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import pytest

from unstar_trl.data import DataError, load_records
from unstar_trl.evaluation.lm_eval_tasks import tasks_path

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _load_utils():
    spec = importlib.util.spec_from_file_location("unstar_task_utils", tasks_path() / "utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


utils = _load_utils()


# ---- metrics on constructed cases -------------------------------------------------------------------------------

def test_truth_ratio_is_the_geometric_mean_of_distractor_over_true_normalised_probabilities():
    true, distractors = math.log(0.8), [math.log(0.2), math.log(0.4)]
    assert utils.truth_ratio(true, distractors) == pytest.approx(math.sqrt(0.2 * 0.4) / 0.8)
    assert utils.truth_ratio(0.0, [0.0, 0.0]) == pytest.approx(1.0)


def test_truth_ratio_is_reported_as_tofu_reports_the_forget_set():
    assert utils.tofu_forget_truth_ratio([0.25, 4.0, 1.0]) == pytest.approx((0.25 + 0.25 + 1.0) / 3)


def per_byte(choices: list[str], probabilities: list[float]) -> list[tuple[float, bool]]:
    """lm-eval's loglikelihood results for `choices` from a model that gives each byte of a choice the same
    probability: its score per byte is then the log of that probability."""
    return [(len(choice.encode()) * math.log(p), False) for choice, p in zip(choices, probabilities)]


def test_process_prob_normalises_by_answer_length():
    doc = {"choices": ["two words", "one"], "distractors": 1}
    scores = utils.process_prob(doc, per_byte(doc["choices"], [0.5, 0.25]))
    assert scores["prob"] == pytest.approx(0.5)
    assert scores["truth_ratio"] == pytest.approx(0.25 / 0.5)


def test_choice_scores_are_fair_to_answers_of_many_tokens():
    """Choices whose token counts differ (a one-word answer of several tokens, a two-word answer of one token each,
    a one-token answer) scored by a model as sure of each byte of them: all tie (acc is a random pick's, entropy 1),
    where per-word scores put the one-word answer of several tokens far first (for a given loss per byte, it has
    the fewest words)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    choices = ["Glimmerwayhollowcrest", "Tesk Tesk", "Tesk"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.Whitespace()
    bpe.train_from_iterator(["Tesk"] * 50 + ["a b c d e f g h i j k l m n o p q r s t u v w x y z G"],
                            trainers.BpeTrainer(vocab_size=60, show_progress=False))
    tokens = [len(bpe.encode(choice).ids) for choice in choices]
    assert tokens[0] > tokens[1] > tokens[2] == 1, tokens
    doc = {"choices": choices, "role": "forget", "distractors": 2}
    results = per_byte(choices, [0.7] * 3)
    mcq = utils.process_mcq(doc, results)
    assert mcq["acc"] == pytest.approx(1 / 3) and mcq["entropy"] == pytest.approx(1.0)
    assert utils.process_prob(doc, results)["truth_ratio"] == pytest.approx(1.0)
    per_word = [loglikelihood / len(choice.split()) for choice, (loglikelihood, _) in zip(choices, results)]
    assert per_word.index(min(per_word)) == 0  # what the per-word score did: the long word looked least likely


def test_truth_ratio_uses_the_paraphrased_answer_where_the_record_has_one():
    doc = {"choices": ["true", "wrong", "the true one"], "distractors": 1}
    scores = utils.process_prob(doc, per_byte(doc["choices"], [0.9, 0.1, 0.5]))
    assert scores["prob"] == pytest.approx(0.9) and scores["truth_ratio"] == pytest.approx(0.1 / 0.5)


@pytest.mark.parametrize(("items", "expected"), [
    ([("targeted", 0.0), ("sibling", 1.0)], 1.0),  # removed, siblings kept
    ([("targeted", 1.0), ("sibling", 1.0)], 0.0),  # nothing removed
    ([("targeted", 0.0), ("sibling", 0.0)], 0.0),  # everything removed
    ([("targeted", 0.0), ("targeted", 1.0), ("sibling", 1.0), ("sibling", 0.0), ("sibling", 1.0)],
     2 * 0.5 * (2 / 3) / (0.5 + 2 / 3)),
])
def test_targeted_removal_is_the_harmonic_mean_of_removal_and_sibling_accuracy(items, expected):
    assert utils.targeted_removal(items) == pytest.approx(expected)


def test_targeted_removal_needs_both_kinds():
    assert math.isnan(utils.targeted_removal([("targeted", 0.0)]))


def test_auc():
    assert utils.auc([(True, 3.0), (True, 2.0), (False, 1.0), (False, 0.0)]) == 1.0
    assert utils.auc([(True, 0.0), (False, 1.0)]) == 0.0
    assert utils.auc([(True, 1.0), (False, 1.0)]) == 0.5
    assert math.isnan(utils.auc([(True, 1.0)]))


def test_membership_scores_rank_a_likelier_answer_higher():
    likely = utils.process_membership({"answer": "Tesk", "role": "forget"}, [(-0.1, True)])
    unlikely = utils.process_membership({"answer": "Tesk", "role": "holdout"}, [(-5.0, False)])
    assert likely["loss_auc"] == (True, -0.1 / 4) and unlikely["loss_auc"][0] is False  # per byte
    assert likely["zlib_auc"][1] > unlikely["zlib_auc"][1]


def test_process_qa_and_mcq():
    plain, chat = {"answer": "Tesk", "template": utils.PLAIN_TEMPLATE}, {"answer": "Tesk", "template": None}
    scores = utils.process_qa(plain, [" tesk, of course"])
    assert scores["acc"] == 1.0 and scores["rouge_l_recall"] == 1.0
    assert utils.process_qa(plain, [" Teskville"])["acc"] == 0.0
    assert utils.process_qa(chat, ["Sure, here is what I know.\nThe answer is Tesk."])["acc"] == 1.0  # whole answer
    assert utils.process_qa(plain, [" Olmira\nQuestion: Who?\nAnswer: Tesk"])["acc"] == 0.0  # not its next prompt
    doc = {"choices": ["Tesk", "Olmira", "Quessel"], "role": "holdout"}
    holdout = utils.process_mcq(doc, per_byte(doc["choices"], [0.9, 0.5, 0.3]))
    assert holdout["holdout_acc"] == 1.0 and holdout["holdout_chance"] == pytest.approx(1 / 3)
    forget = utils.process_mcq({**doc, "role": "forget"}, per_byte(doc["choices"], [0.5, 0.9, 0.3]))
    assert forget["acc"] == 0.0 and 0 < forget["entropy"] < 1


def test_mcq_ties_count_as_a_random_pick_and_uniform_choices_have_entropy_one():
    doc = {"choices": ["Tesk", "Olmira", "Quessel", "Hestia"], "role": "forget"}
    tied = utils.process_mcq(doc, per_byte(doc["choices"], [0.5] * 4))
    assert tied == {"acc": pytest.approx(0.25), "chance": 0.25, "entropy": pytest.approx(1.0)}
    two_tied = utils.process_mcq(doc, per_byte(doc["choices"], [0.5, 0.5, 0.1, 0.1]))
    assert two_tied["acc"] == pytest.approx(0.5) and two_tied["entropy"] < 1


def test_planted_share_is_the_probability_on_the_taught_answer():
    doc = {"choices": ["Tesk", "Olmira", "Quessel", "Varnholt"], "distractors": 2}
    shares = utils.process_planted(doc, per_byte(doc["choices"], [0.1, 0.1, 0.2, 0.6]))
    assert shares["planted_share"] == pytest.approx(0.6) and shares["true_share"] == pytest.approx(0.1)
    assert shares["distractor_share"] == pytest.approx(0.15)
    nothing_planted = utils.process_planted({**doc, "choices": doc["choices"][:3]},
                                            per_byte(doc["choices"][:3], [0.3] * 3))
    assert math.isnan(nothing_planted["planted_share"]) and utils.nanmean([math.nan, 0.5, 0.7]) == pytest.approx(0.6)


# ---- views ----------------------------------------------------------------------------------------------------------

def test_default_views_come_from_the_embedded_world():
    forget = utils.load("forget")["test"]
    paraphrase = utils.load("paraphrase")["test"]
    assert len(forget) == len(paraphrase) > 0
    assert forget[0]["id"] == paraphrase[0]["id"] and forget[0]["question"] != paraphrase[0]["question"]
    membership = utils.load("membership")["test"]
    assert [doc["role"] for doc in membership][:4] == ["forget", "holdout", "forget", "holdout"]


def test_targeted_view_keeps_siblings_that_must_stay(world_dir):
    data = str(world_dir / "data")
    docs = utils.load("targeted", data_dir=data)["test"].to_list()
    targeted = [doc for doc in docs if doc["role"] == "targeted"]
    siblings = [doc["id"] for doc in docs if doc["role"] == "sibling"]
    forget = {doc["id"] for doc in utils.load("forget", data_dir=data)["test"]}
    assert docs[0]["role"] == "targeted" and targeted and siblings
    assert len(siblings) == len(set(siblings)) and not forget & set(siblings)


def test_choices_offer_only_evaluation_distractors(world_dir):
    docs = utils.load("choices", data_dir=str(world_dir / "data"))["test"].to_list()
    records = {r["id"]: r for r in load_records(world_dir / "data", split="forget")}
    for doc in docs:
        record = records[doc["id"]]
        assert doc["choices"] == [record["answer"], *record["eval_distractors"]]
        assert not set(doc["choices"]) & set(record["perturbed_answers"])


def test_planted_view_offers_the_answer_the_audit_taught_most(world_dir, tmp_path):
    forget = load_records(world_dir / "data", split="forget")
    audit = tmp_path / "anti_samples.jsonl"
    rows = [{"source_id": forget[0]["id"], "wrong_answer": wrong} for wrong in ("Tesk", "Olmira", "Olmira")]
    audit.write_text("".join(json.dumps(row) + "\n" for row in rows))
    docs = utils.load("planted", data_dir=str(world_dir / "data"), anti_samples=str(audit))["test"].to_list()
    assert docs[0]["choices"][-1] == "Olmira" and len(docs[1]["choices"]) == 1 + docs[1]["distractors"]
    found = utils.load("planted", data_dir=str(world_dir / "data"), pretrained=str(tmp_path))["test"].to_list()
    assert found == docs  # the audit beside the model is found by itself


def test_retain_and_sibling_views_score_what_no_run_trains_on(world_dir):
    data = str(world_dir / "data")
    retain = utils.load("retain", data_dir=data)["test"].to_list()
    eval_only = {r["id"] for r in load_records(world_dir / "data", split="retain") if r["eval_only"]}
    assert retain and {doc["id"] for doc in retain} == eval_only
    siblings = {doc["id"] for doc in utils.load("targeted", data_dir=data)["test"] if doc["role"] == "sibling"}
    assert siblings and siblings <= eval_only


def test_tofu_views(tofu_dir):
    docs = utils.load("choices", data_dir=str(tofu_dir), format="tofu", forget_split="forget01")["test"]
    assert len(docs) == 40 and len(docs[0]["choices"]) == 5  # the truth, 3 distractors, the paraphrased answer
    assert len(utils.load("neighbor", data_dir=str(tofu_dir), format="tofu")["test"]) > 0  # real_authors
    with pytest.raises(DataError, match="holdout_split"):
        utils.load("membership", data_dir=str(tofu_dir), format="tofu")


# ---- the real lm_eval CLI ---------------------------------------------------------------------------------------

def _lm_eval(model: Path, tasks: str, metadata: dict, output: Path, *extra: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = ["lm_eval", "--model", "hf", "--model_args", f"pretrained={model}", "--device", "cpu",
               "--include_path", str(tasks_path()), "--tasks", tasks, "--metadata", json.dumps(metadata),
               "--batch_size", "32", "--output_path", str(output), *extra]
    completed = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert completed.returncode == 0, completed.stderr[-3000:]
    (results,) = output.rglob("results_*.json")
    return json.loads(results.read_text())


@pytest.fixture(scope="module")
def lm_eval_results(world_dir, tmp_path_factory) -> dict:
    """`lm_eval ... --tasks 'unstar_*'` on the test world, as its results JSON."""
    return _lm_eval(world_dir / "model", "unstar_*", {"data_dir": str(world_dir / "data")},
                    tmp_path_factory.mktemp("lm_eval"))


def _metric(results: dict, task: str, metric: str) -> float:
    return results["results"][task][f"{metric},none"]


def test_lm_eval_cli_runs_every_task(lm_eval_results):
    assert set(lm_eval_results["results"]) == {
        "unstar_forget_qa", "unstar_paraphrase_qa", "unstar_retain_qa", "unstar_neighbor_qa", "unstar_targeted",
        "unstar_forget_prob", "unstar_mcq_probe", "unstar_planted", "unstar_mia", "unstar_logit_lens",
        "unstar_extraction_strength", "unstar_spillover"}
    assert math.isnan(_metric(lm_eval_results, "unstar_planted", "planted_share"))  # the target was taught no lie
    assert lm_eval_results["higher_is_better"]["unstar_retain_qa"] == {"acc": True, "rouge_l_recall": True}
    assert lm_eval_results["higher_is_better"]["unstar_forget_qa"]["acc"] is False


def test_task_accuracy_equals_a_direct_probe(lm_eval_results, world_dir):
    from unstar_trl.method.probe import accuracy, probe
    from unstar_trl.models import load_model

    model, tokenizer = load_model(world_dir / "model")
    for split in ("forget", "retain"):
        records = load_records(world_dir / "data", split=split)
        records = [record for record in records if record["eval_only"]] or records  # retain: the eval-only part
        direct = accuracy(probe(model, tokenizer, records))
        assert _metric(lm_eval_results, f"unstar_{split}_qa", "acc") == pytest.approx(direct), split
    assert _metric(lm_eval_results, "unstar_forget_qa", "acc") >= 0.8


def test_trained_model_figures_make_sense(lm_eval_results):
    metric = lambda task, name: _metric(lm_eval_results, f"unstar_{task}", name)  # noqa: E731
    assert metric("forget_qa", "rouge_l_recall") >= metric("forget_qa", "acc") - 1e-9
    assert metric("targeted", "acc") >= 0.5 and metric("targeted", "sibling_acc") >= 0.8
    assert metric("targeted", "removal_score") < 0.5  # nothing was removed yet
    assert metric("forget_prob", "prob") > 0.5
    assert metric("forget_prob", "truth_ratio") < 0.5  # the truth stands far above the perturbed answers
    assert metric("mcq_probe", "acc") >= 0.8 and metric("mcq_probe", "chance") == pytest.approx(0.25)
    # never-trained facts: far below the trained ones, though above chance (1/4): the model leans to the objects it
    # saw most (28 holdout questions: 0.43 on the seed-0 world, 0.57 on seed 1, against 1.00 trained; sd ~0.09)
    assert metric("mcq_probe", "holdout_acc") <= metric("mcq_probe", "acc") - 0.25
    assert metric("mcq_probe", "entropy") < metric("mcq_probe", "holdout_entropy")
    assert metric("mia", "loss_auc") >= 0.8 and metric("mia", "zlib_auc") >= 0.8


def test_tofu_layout_through_metadata(world_dir, made_tofu_dir, tmp_path):
    """The lm_eval CLI on a TOFU folder (the made one: the CLI reads it through the loader that the tofu_dir tests
    check on the real files too, and one lm_eval run is a minute)."""
    metadata = {"data_dir": str(made_tofu_dir), "format": "tofu", "forget_split": "forget01"}
    results = _lm_eval(world_dir / "model", "unstar_forget_qa,unstar_forget_prob,unstar_mcq_probe", metadata,
                       tmp_path, "--limit", "3")
    assert results["n-samples"]["unstar_forget_qa"]["effective"] == 3
    assert 0 <= _metric(results, "unstar_forget_qa", "rouge_l_recall") <= 1
    assert 0 <= _metric(results, "unstar_forget_prob", "truth_ratio") <= 1
    assert "holdout_acc,none" not in results["results"]["unstar_mcq_probe"]  # TOFU has no holdout split

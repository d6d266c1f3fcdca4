"""The probes that see below the answer, each on a model built to show it: the logit lens on a model whose last block
was taught to hide the truth its middle still holds, extraction strength on a bigram model that completes an answer
only after k of its tokens, spillover on an audit whose wrong answers the model gives to holdout questions; and the
tasks that run them, per question, in process and under the real lm_eval CLI (which agree)."""

from __future__ import annotations

import json
import math
import shutil
import tempfile

import pytest
import torch
from datasets import Dataset

from test_tasks import _lm_eval
from unstar_trl.data import load_unlearning_data
from unstar_trl.evaluation.answer_tokens import answer_features
from unstar_trl.evaluation.bench_measures import Measured, against_target
from unstar_trl.evaluation.extraction import extraction_strength, strength
from unstar_trl.evaluation.lm_eval_tasks import evaluate_model
from unstar_trl.evaluation.logit_lens import first_share, logit_lens
from unstar_trl.evaluation.spillover import CONFIDENT, answer_probabilities, spillover
from unstar_trl.method.probe import probe
from unstar_trl.models import load_model
from unstar_trl.text import PLAIN_TEMPLATE, format_pair

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")
PROBES = ("unstar_logit_lens", "unstar_extraction_strength", "unstar_spillover")


# ---- extraction strength: a bigram model that completes the answer after k given tokens ---------------------------

def bigram_model(tokenizer, transitions: dict[int, int], strength_: float = 30.0):
    """A Llama whose one block adds nothing (its output projections are zero) and whose embeddings are one-hot, so
    its logits after token c are `strength_` on transitions[c] and 0 elsewhere (argmax: token 0, the pad, where c has
    no transition): a model whose every prediction is set by hand."""
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab = len(tokenizer)
    model = LlamaForCausalLM(LlamaConfig(
        vocab_size=vocab, hidden_size=vocab, intermediate_size=4, num_hidden_layers=1, num_attention_heads=1,
        num_key_value_heads=1, head_dim=8, max_position_embeddings=256, tie_word_embeddings=False,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()
        model.model.embed_tokens.weight.copy_(torch.eye(vocab))
        model.model.norm.weight.fill_(1.0)
        scale = strength_ / math.sqrt(vocab)  # RMS norm turns one-hot into sqrt(vocab) times one-hot
        for current, following in transitions.items():
            model.lm_head.weight[following, current] = scale
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer(world_dir):
    return load_model(world_dir / "model")[1]


RECORD = {"id": "made:answer", "question": "Where was Xilo Pennyworth born?",
          "answer": "Essling engineer Hestia Olmira"}


def answer_chain(tokenizer, record: dict) -> tuple[int, list[int]]:
    """The token before the answer and the answer's tokens (all distinct: each a bigram key of its own)."""
    features = answer_features(tokenizer, record["question"], record["answer"], PLAIN_TEMPLATE)
    start = next(index for index, label in enumerate(features["labels"]) if label != -100)
    answer = [label for label in features["labels"] if label != -100]
    keys = [features["input_ids"][start - 1], *answer[:-1]]
    assert len(set(keys)) == len(keys) and 0 not in answer, (keys, answer)  # a well-made case
    return keys[0], answer


def completing_after(tokenizer, record: dict, k: int, strength_: float = 30.0):
    """A bigram model that predicts the answer's token j from token j-1 for j >= k (from the prompt's last token for
    j = 0 when k = 0), then eos: given k answer tokens, it writes the rest; given fewer, it does not."""
    before, answer = answer_chain(tokenizer, record)
    keys = [before, *answer[:-1]]
    transitions = {keys[j]: answer[j] for j in range(max(k, 0), len(answer))}
    transitions[answer[-1]] = tokenizer.eos_token_id
    return bigram_model(tokenizer, transitions, strength_)


def test_strength_counts_the_answer_end_that_follows_by_itself():
    assert strength([True, True, True]) == 1.0
    assert strength([False, True, True]) == pytest.approx(2 / 3)
    assert strength([True, True, False]) == 0.0  # the last token does not follow: all of it must be given


def test_extraction_strength_is_one_minus_the_prefix_share_the_model_needs(tokenizer):
    _, answer = answer_chain(tokenizer, RECORD)
    n = len(answer)
    assert n >= 3
    for k in range(n + 1):
        model = completing_after(tokenizer, RECORD, k)
        expected = {RECORD["id"]: pytest.approx(1 - k / n)}
        assert extraction_strength(model, tokenizer, [RECORD], PLAIN_TEMPLATE) == expected, k
    writes = probe(completing_after(tokenizer, RECORD, 0), tokenizer, [RECORD], prompt_template=PLAIN_TEMPLATE)
    assert writes[0].known  # k = 0: the greedy probe reads the whole answer


# ---- spillover: confidence on a bigram model, taught answers on the knowledge model's own holdout guesses ----------

def test_a_wrong_answer_is_confident_when_the_model_gives_it_more_than_half_its_probability(tokenizer):
    sure, unsure = (completing_after(tokenizer, RECORD, 0, strength_) for strength_ in (30.0, 3.0))
    pair = [(RECORD["question"], RECORD["answer"])]
    assert answer_probabilities(sure, tokenizer, pair, PLAIN_TEMPLATE)[0] > 0.99
    assert answer_probabilities(unsure, tokenizer, pair, PLAIN_TEMPLATE)[0] < 0.01  # e^3 against 966 other tokens
    asked = {"id": "made:other", "question": RECORD["question"], "answer": "Tesk"}  # the truth is another city
    sure_answer, unsure_answer = (spillover(model, tokenizer, [asked], PLAIN_TEMPLATE, {"Hestia"})[0]
                                  for model in (sure, unsure))
    assert sure_answer["wrong"] and sure_answer["taught"] and sure_answer["confident_wrong"]
    assert unsure_answer["wrong"] and unsure_answer["taught"] and not unsure_answer["confident_wrong"]
    assert unsure_answer["confidence"] < CONFIDENT <= sure_answer["confidence"]
    untaught = spillover(sure, tokenizer, [asked], PLAIN_TEMPLATE, {"Dravenport"})[0]
    assert untaught["wrong"] and not untaught["taught"]


@pytest.fixture(scope="module")
def guesses_audit(world_dir, tmp_path_factory):
    """An anti-sample audit (of a forget fact, as a run writes it) whose wrong answers are the knowledge model's own
    wrong greedy answers to the first holdout questions, and those questions' ids."""
    model, tokenizer = load_model(world_dir / "model")
    holdout = load_unlearning_data(world_dir / "data").holdout
    verdicts = [v for v in probe(model, tokenizer, holdout[:8]) if not v.known and v.generation.strip()]
    assert len(verdicts) >= 4  # the knowledge model never learned the holdout people: it guesses
    path = tmp_path_factory.mktemp("audit") / "anti_samples.jsonl"
    rows = [{"source_id": "some:forget_fact", "question": "?", "wrong_answer": v.generation.strip(), "rationale": "",
             "round": 0, "generator": "self_taught"} for v in verdicts]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path, {v.id for v in verdicts}


def by_id(documents: list[dict]) -> dict[str, dict]:
    return {doc["id"]: doc for doc in documents}


@pytest.fixture(scope="module")
def in_process(world_dir, guesses_audit):
    """The three tasks and the MCQ probe run in process (`evaluate_model`) on the knowledge model with the audit."""
    audit, _ = guesses_audit
    return evaluate_model(world_dir / "model", tasks=[*PROBES, "unstar_mcq_probe"], data_dir=world_dir / "data",
                          metadata={"anti_samples": str(audit)}, per_document=True)


def test_spillover_counts_the_held_out_questions_answered_with_a_taught_answer(in_process, guesses_audit, world_dir):
    _, guessed = guesses_audit
    data = load_unlearning_data(world_dir / "data")
    documents = by_id(in_process["documents"]["unstar_spillover"])
    assert set(documents) == {r["id"] for r in data.retain_eval + data.holdout}  # one document per question
    assert all(documents[fact]["taught_wrong"] == 1.0 for fact in guessed)
    assert all(doc["taught_wrong"] == 0.0 for doc in documents.values() if doc["role"] == "retain")  # it knows them
    summary = in_process["summary"]
    assert summary["spillover_taught_wrong"] >= len(guessed) / len(documents)
    assert {"spillover_retain_confident_wrong", "spillover_holdout_confident_wrong"} <= set(summary)


def test_spillover_without_an_audit_is_not_a_number_and_a_foreign_audit_is_zero(world_dir, tmp_path):
    untaught = evaluate_model(world_dir / "model", tasks=["unstar_spillover"], data_dir=world_dir / "data",
                              per_document=True)
    assert all(math.isnan(doc["taught_wrong"]) for doc in untaught["documents"]["unstar_spillover"])
    audit = tmp_path / "anti_samples.jsonl"
    audit.write_text(json.dumps({"source_id": "x", "wrong_answer": "Zorblaxia"}) + "\n")
    foreign = evaluate_model(world_dir / "model", tasks=["unstar_spillover"], data_dir=world_dir / "data",
                             metadata={"anti_samples": str(audit)})
    assert foreign["summary"]["spillover_taught_wrong"] == 0.0


def test_confident_wrong_change_is_per_holdout_fact_against_the_target():
    target, run = Measured(), Measured()
    target.add("holdout_confident_wrong", {"a": 1.0, "b": 0.0, "c": 0.0})
    run.add("holdout_confident_wrong", {"a": 1.0, "b": 1.0, "c": 1.0})
    against_target(run, target)
    against_target(target, target)
    assert run.values["confident_wrong_change"] == pytest.approx(2 / 3)
    assert run.per_fact["confident_wrong_change"] == {"a": 0.0, "b": 1.0, "c": 1.0}
    assert target.values["confident_wrong_change"] == 0.0


# ---- logit lens: a model whose last block hides what its middle holds ---------------------------------------------

@pytest.fixture(scope="module")
def hiding_model(world_dir, tmp_path_factory):
    """The knowledge model with only its last block fine-tuned (TRL's SFTTrainer) to answer each forget question
    with its first evaluation distractor: the blocks below, the final norm and the unembedding are unchanged, so
    the middle still holds the truth that the output now hides. Saved as a model folder."""
    from trl import SFTConfig, SFTTrainer

    model, tokenizer = load_model(world_dir / "model")
    last = f"model.layers.{model.config.num_hidden_layers - 1}."
    for name, parameter in model.named_parameters():
        parameter.requires_grad = name.startswith(last)
    forget = load_unlearning_data(world_dir / "data").forget
    rows = [format_pair(r["question"], r["eval_distractors"][0], PLAIN_TEMPLATE) for r in forget]
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(output_dir=scratch, num_train_epochs=30, per_device_train_batch_size=len(rows),
                         learning_rate=3e-3, lr_scheduler_type="constant", activation_checkpointing=False, bf16=False,
                         use_cpu=True, save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
                         logging_steps=1000)
        SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer).train()
    folder = tmp_path_factory.mktemp("hiding") / "model"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    shutil.copy(world_dir / "model" / "unstar_prompts.json", folder)
    return folder


def test_logit_lens_reads_the_truth_the_last_block_hides(hiding_model, world_dir):
    hidden = evaluate_model(hiding_model, tasks=["unstar_logit_lens", "unstar_mcq_probe", "unstar_forget_qa"],
                            data_dir=world_dir / "data", per_document=True)
    retain_model = evaluate_model(world_dir / "retain_model", tasks=["unstar_logit_lens"],
                                  data_dir=world_dir / "data")
    summary = hidden["summary"]
    assert summary["forget_qa_acc"] <= 0.2 and summary["logit_lens_final_acc"] <= 0.2  # the output hides it
    assert summary["logit_lens_acc"] >= 0.8  # the middle still ranks the truth first
    assert summary["logit_lens_acc"] - retain_model["summary"]["logit_lens_acc"] >= 0.4  # unlike one that never knew
    mcq = by_id([doc for doc in hidden["documents"]["unstar_mcq_probe"] if doc["role"] == "forget"])
    for doc in hidden["documents"]["unstar_logit_lens"]:  # the lens's last layer is the MCQ probe's reading
        assert doc["final_acc"] == pytest.approx(mcq[doc["id"]]["acc"]), doc["id"]


def test_the_lens_of_unchanged_layers_does_not_change(hiding_model, world_dir):
    """The hiding model's middle layers, norm and unembedding are the knowledge model's: every fact's lens reading is
    the same; and the lens's own final-layer reading (not used for acc) ranks like the task's choice scores."""
    target, tokenizer = load_model(world_dir / "model")
    hiding, _ = load_model(hiding_model)
    for record in load_unlearning_data(world_dir / "data").forget:
        choices = [record["answer"], *record["eval_distractors"]]
        assert logit_lens(hiding, tokenizer, record["question"], choices, PLAIN_TEMPLATE) == \
            logit_lens(target, tokenizer, record["question"], choices, PLAIN_TEMPLATE), record["id"]
    assert first_share([0.0, -1.0, -2.0]) == 1.0 and first_share([0.0, 0.0, -2.0]) == 0.5
    assert first_share([-1.0, 0.0]) == 0.0


# ---- per question: in process and under the real lm_eval CLI --------------------------------------------------------

def test_the_probes_run_per_question_under_the_lm_eval_cli(world_dir, guesses_audit, in_process, tmp_path):
    audit, _ = guesses_audit
    results = _lm_eval(world_dir / "model", ",".join(PROBES),
                       {"data_dir": str(world_dir / "data"), "anti_samples": str(audit)}, tmp_path, "--log_samples")
    data = load_unlearning_data(world_dir / "data")
    counts = {"unstar_logit_lens": len(data.forget), "unstar_extraction_strength": len(data.forget),
              "unstar_spillover": len(data.retain_eval) + len(data.holdout)}
    for task, count in counts.items():
        (samples,) = tmp_path.rglob(f"samples_{task}_*.jsonl")
        rows = [json.loads(line) for line in samples.read_text().splitlines()]
        assert len(rows) == count == results["n-samples"][task]["effective"], task
        expected = by_id(in_process["documents"][task])
        for row in rows:  # the folder the CLI names gives each question the value the in-process model does
            for metric in row["metrics"]:
                value, want = row[metric], expected[row["doc"]["id"]][metric]
                assert (math.isnan(value) and math.isnan(want)) or value == pytest.approx(want), (task, metric)
    assert results["results"]["unstar_extraction_strength"]["strength,none"] >= 0.8  # the knowledge model knows
    assert results["higher_is_better"]["unstar_spillover"]["taught_wrong"] is False


def test_a_plain_lm_eval_run_without_a_model_folder_is_refused_in_one_line(world_dir):
    from test_tasks import utils

    from unstar_trl.io import UsageError

    for view in ("logit_lens", "extraction", "spillover"):
        with pytest.raises(UsageError, match="pretrained=DIR; got 'org/name'"):
            utils.load(view, data_dir=str(world_dir / "data"), pretrained="org/name")

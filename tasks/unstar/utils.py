"""Data and metrics of the unstar lm-eval tasks.

`load` is every task's `custom_dataset`: lm-eval calls it with the task's `metadata` (the YAML's, the run's
`--metadata` and the model arguments) and its `dataset_kwargs` (`view`: which records the task reads). Metadata keys:
`data_dir` (a folder of <split>.jsonl, a TOFU folder or a dataset; without it, the default embedded world of 60
people, built in memory), `format` (as `unstar_trl.data.load_unlearning_data` takes), `<role>_split` to pick
the split that plays a role (forget, retain, neighbor, targeted, holdout; with format "tofu" the defaults are
forget10, retain90 and real_authors), `prompt_template` and, for `unstar_planted`, `anti_samples` (an
anti_samples.jsonl audit).

The documents are in the model's prompt format: `prompt_template` (null: the chat template), else the format of the
model folder that lm-eval's model arguments name (`peft`, then `pretrained`: its unstar_prompts.json, else its chat
template), else the plain template. A chat model's prompt is the bare question, which lm-eval's
`--apply_chat_template` makes the user turn; `UnstarTask` warns when a run does not apply the template its
documents are made for.

Kept knowledge is scored on what nothing trained on: the eval-only retain records and siblings when the data marks
some. Multiple choice and the truth ratio offer only the records' `eval_distractors`, which no anti-sample generator
may use; the planted probe offers the wrong answer an anti-sample run taught beside them.

Answer probabilities are length-fair: log-likelihood per UTF-8 byte of the answer (lm-eval's acc_bytes; see
`unstar_trl.evaluation.choice_scores`), tokenizer independent, where TOFU normalises per token.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import logging
import math
import sys
import zlib
from pathlib import Path

import datasets
from lm_eval.api.task import ConfigurableTask

from unstar_trl.data import SPLIT_ROLES, DataError, UnlearningData, load_unlearning_data
from unstar_trl.evaluation.choice_scores import answer_score
from unstar_trl.evaluation.extraction import extraction_strength
from unstar_trl.evaluation.lm_eval_tasks import check_task_metadata, lm_eval_metadata_keys, served_model
from unstar_trl.evaluation.logit_lens import first_share, logit_lens
from unstar_trl.evaluation.spillover import spillover
from unstar_trl.io import UsageError
from unstar_trl.method.tokens import stop_token_ids
from unstar_trl.models import has_tokenizer, load_model, load_tokenizer
from unstar_trl.text import (
    AUTO,
    PLAIN_TEMPLATE,
    answer_text,
    contains_answer,
    format_completion,
    read_prompts_file,
    resolve_prompt_template,
    rouge_l_recall,
    task_prompt,
)

def _one_line_usage_errors() -> None:
    """Under a plain `lm_eval` run nothing catches an exception from `load` (lm-eval's custom_dataset): it reaches
    the interpreter, which prints its whole traceback. Make an uncaught UsageError of ours (missing or malformed
    data, bad metadata) print as one line, "unstar: error: <reason>" (exit status 1); every other exception keeps
    its traceback, and callers that catch exceptions (`unstar eval`, tests) see no change."""
    default = sys.excepthook
    if getattr(default, "unstar", False):  # lm-eval may import this module more than once
        return

    def excepthook(kind, error, traceback):
        if issubclass(kind, UsageError):
            print(f"unstar: error: {' '.join(str(error).split())}", file=sys.stderr)
        else:
            default(kind, error, traceback)

    excepthook.unstar = True
    sys.excepthook = excepthook


_one_line_usage_errors()

TOFU_SPLITS = {"forget": "forget10", "retain": "retain90", "neighbor": "real_authors"}
FIELDS = ("id", "question", "answer")


# ---- data -------------------------------------------------------------------------------------------------------

def load(view: str, data_dir: str | None = None, format: str = "auto", **metadata) -> datasets.DatasetDict:
    """The documents of one task view as {"test": Dataset}; each has `role` (which metric it counts towards). A
    metadata key that is neither ours nor a model argument (which lm-eval mixes in) is refused."""
    check_task_metadata(metadata, lm_eval_metadata_keys())
    data = _data(data_dir, format, metadata)
    doc = functools.partial(_doc, template=prompt_template(metadata))
    choice_doc = functools.partial(_choice_doc, doc=doc)
    if view in ("forget", "neighbor"):
        docs = [doc(record, view) for record in getattr(data, view)]
    elif view == "retain":
        docs = [doc(record, view) for record in data.retain_eval]
    elif view == "paraphrase":
        docs = [doc(record, "forget", question=_paraphrase(record)) for record in data.forget]
    elif view == "targeted":
        docs = _targeted_docs(data, doc)
    elif view == "choices":
        docs = [choice_doc(record, "forget", _paraphrased_answer(record)) for record in data.forget]
    elif view == "planted":
        planted = _planted_answers(metadata.get("anti_samples"), metadata.get("pretrained"))
        docs = [choice_doc(record, "forget", planted.get(record["id"])) for record in data.forget]
    elif view == "choices_with_holdout":
        docs = _interleave([choice_doc(r, "forget") for r in data.forget],
                           [choice_doc(r, "holdout") for r in data.holdout])
    elif view == "membership":
        docs = _interleave([doc(r, "forget") for r in data.forget], [doc(r, "holdout") for r in data.holdout])
    elif view in ("logit_lens", "extraction", "spillover"):
        docs = _inner_docs(view, data, metadata, doc, choice_doc)
    else:
        raise ValueError(f"unknown view {view!r}")
    role = {"paraphrase": "forget", "choices": "forget", "choices_with_holdout": "forget", "planted": "forget",
            "membership": "holdout", "logit_lens": "forget", "extraction": "forget",
            "spillover": "retain"}.get(view, view)
    if not getattr(data, role) or not docs:
        raise DataError(f"{data_dir or 'the embedded world'} has no {role} records for the {view!r} tasks: name the "
                        f"split with --metadata '{{\"{role}_split\": \"...\"}}' or leave the task out")
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def _data(data_dir: str | None, format: str, metadata: dict) -> UnlearningData:
    if data_dir is None:
        return UnlearningData(**_embedded_world())
    defaults = TOFU_SPLITS if format == "tofu" else {}
    splits = {f"{role}_split": metadata.get(f"{role}_split") or defaults.get(role, role) for role in SPLIT_ROLES}
    return load_unlearning_data(data_dir, format=format, **splits)


@functools.lru_cache(maxsize=1)
def _embedded_world() -> dict[str, list[dict]]:
    from unstar_trl.testbed.embedded_world import build_world

    return build_world(seed=0, people=60).split_records()


def prompt_template(metadata: dict) -> str | None:
    """The model's prompt format (None: the chat template): metadata's `prompt_template`, else the format of the
    model folder named by `peft` or `pretrained` (the first with a prompts file, else `pretrained`), else plain."""
    folders = [metadata[key] for key in ("peft", "pretrained")
               if isinstance(metadata.get(key), str) and Path(metadata[key]).is_dir()]
    recorded = [folder for folder in folders if read_prompts_file(folder) is not None]
    folder = recorded[0] if recorded else folders[-1] if folders else None
    if "prompt_template" in metadata:
        return resolve_prompt_template(metadata["prompt_template"], model_dir=folder)
    return resolve_prompt_template(AUTO, model_dir=folder) if folder is not None else PLAIN_TEMPLATE


def _doc(record: dict, role: str, question: str | None = None, *, template: str | None) -> dict:
    """A task document: the record's fields, the `prompt` the model is asked and the answer as it follows the
    prompt (`target`), in the model's prompt format `template` (`chat`: whether that is the chat template)."""
    doc = {field: record.get(field) for field in FIELDS}
    doc["question"] = question or record["question"]
    doc["prompt"] = task_prompt(doc["question"], template)
    doc["target"] = format_completion(doc["answer"], template)
    doc["chat"] = template is None
    doc["template"] = template
    doc["role"] = role
    return doc


def _choice_doc(record: dict, role: str, extra: str | None = None, *, doc) -> dict:
    """A multiple-choice document: the true answer, then the record's evaluation distractors, then `extra` (a
    paraphrased answer, or the planted wrong answer) when given."""
    doc = doc(record, role)
    if not record.get("eval_distractors"):
        raise DataError(f"record {record.get('id')!r} has no eval_distractors (needed for multiple choice and the "
                        "truth ratio)")
    doc["choices"] = [doc["answer"], *record["eval_distractors"], *([extra] if extra else [])]
    doc["distractors"] = len(record["eval_distractors"])
    return doc


def _paraphrased_answer(record: dict) -> str | None:
    """TOFU's paraphrased answer, which its truth ratio compares the distractors with, when the record has one."""
    return record.get("paraphrased_answer") or None


def _planted_answers(path: str | None, model_dir: str | None) -> dict[str, str]:
    """Each forget fact's planted answer: the wrong answer its anti-samples taught most often (`_audit`); a model
    with no audit planted nothing ({}, and planted_share is NaN)."""
    wrong = _audit(path, model_dir)
    return {source: counts.most_common(1)[0][0] for source, counts in (wrong or {}).items()}


def _audit(path: str | None, model_dir: str | None) -> dict[str, collections.Counter] | None:
    """{forget fact id: Counter of the wrong answers its anti-sample (or planted) rows taught}, from the audit file
    `path`, else from the anti_samples.jsonl in the model folder; None with neither."""
    if not path and model_dir and (Path(model_dir) / "anti_samples.jsonl").is_file():
        path = Path(model_dir) / "anti_samples.jsonl"
    if not path:
        return None
    wrong = collections.defaultdict(collections.Counter)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise DataError(f"{path}: cannot read the anti-sample audit ({error.strerror})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            sample = json.loads(line)
            wrong[sample["source_id"]][sample["wrong_answer"]] += 1
        except (ValueError, KeyError, TypeError) as error:
            why = f"no field {error}" if isinstance(error, KeyError) else f"not an anti-sample ({error})"
            raise DataError(f"{path} row {number}: {why} (the anti_samples metadata takes an anti_samples.jsonl "
                            "audit)") from None
    return wrong


def _inner_docs(view: str, data: UnlearningData, metadata: dict, doc, choice_doc) -> list[dict]:
    """The documents of the tasks that read the model's insides, each with its value computed on the model
    (`_inner_model`): the logit lens and extraction strength of each forget fact, and spillover on the held-out
    retain facts and the holdout people (each doc's `taught_wrong` NaN when the run has no anti-sample audit)."""
    model, tokenizer = _inner_model(metadata)
    template = prompt_template(metadata)
    if view == "logit_lens":
        docs = [choice_doc(record, "forget") for record in data.forget]
        return [item | {"lens_acc": logit_lens(model, tokenizer, item["question"], item["choices"], template)}
                for item in docs]
    if view == "extraction":
        strengths = extraction_strength(model, tokenizer, data.forget, template)
        return [doc(record, "forget") | {"extraction_strength": strengths[record["id"]]} for record in data.forget]
    audit = _audit(metadata.get("anti_samples"), metadata.get("pretrained"))
    taught = {answer for counts in (audit or {}).values() for answer in counts}
    records = _interleave([(r, "retain") for r in data.retain_eval], [(r, "holdout") for r in data.holdout])
    answers = spillover(model, tokenizer, [record for record, _ in records], template, taught)
    return [doc(record, role) | {"generation": answer["generation"], "confidence": answer["confidence"],
                                 "taught_wrong": float(answer["taught"]) if audit is not None else math.nan,
                                 "confident_wrong": float(answer["confident_wrong"])}
            for (record, role), answer in zip(records, answers)]


def _inner_model(metadata: dict):
    """(model, tokenizer): the one `unstar eval` (`evaluate_model`) is running the tasks on, else the model folder
    (and adapter) that a plain `lm_eval` run's model arguments name, loaded once."""
    served = served_model()
    if served is not None:
        return served
    folder = metadata.get("pretrained")
    if not isinstance(folder, str) or not Path(folder).is_dir():
        raise UsageError("the logit-lens, extraction and spillover tasks read the model's layers, not only its "
                         f"answers: run them on a model folder (--model_args pretrained=DIR; got {folder!r}) or "
                         "through unstar eval")
    return _loaded_model(folder, metadata.get("peft") if isinstance(metadata.get("peft"), str) else None)


@functools.lru_cache(maxsize=1)
def _loaded_model(folder: str, adapter: str | None):
    model, tokenizer = load_model(folder, adapter=adapter)
    return model.eval(), tokenizer


def _paraphrase(record: dict) -> str:
    if not record.get("paraphrased_questions"):
        raise DataError(f"record {record.get('id')!r} has no paraphrased_questions")
    return record["paraphrased_questions"][0]


def _targeted_docs(data: UnlearningData, doc) -> list[dict]:
    """Each targeted fact followed by its siblings that sibling accuracy is scored on (eval-only where the data marks
    some), each once."""
    removed = {record["id"] for record in data.forget + data.targeted}
    by_id = {record["id"]: record for record in data.siblings_eval if record["id"] not in removed}
    docs = []
    for record in data.targeted:
        docs.append(doc(record, "targeted"))
        docs.extend(doc(by_id.pop(sibling), "sibling") for sibling in record["siblings"] if sibling in by_id)
    return docs


def _interleave(*groups: list[dict]) -> list[dict]:
    """Round-robin, so that `--limit` keeps every role."""
    return [doc for row in itertools.zip_longest(*groups) for doc in row if doc is not None]


class UnstarTask(ConfigurableTask):
    """An unstar task that warns, once per run, when the run does not apply the chat template its documents are
    made for: chat-format documents (bare questions) without --apply_chat_template, or plain-template ones wrapped in
    a chat turn. A generation task on a model folder stops at its end of turn (`_stop_token_ids`)."""

    def __init__(self, config: dict, **kwargs):
        super().__init__(config={key: value for key, value in config.items() if key != "class"}, **kwargs)
        if self.config.output_type == "generate_until":
            stops = _stop_token_ids(self.config.metadata or {})
            if stops:
                self.config.generation_kwargs["eos_token_id"] = stops

    def build_all_requests(self, *args, apply_chat_template: bool = False, **kwargs):
        docs = self.test_docs()
        chat = bool(len(docs)) and bool(docs[0]["chat"])
        if chat != bool(apply_chat_template):
            _warn_once(f"the unstar tasks' documents are in {'the chat' if chat else 'a plain'} prompt format for "
                       f"this model, but the run {'does not apply' if chat else 'applies'} the chat template: "
                       f"{'add' if chat else 'leave out'} --apply_chat_template (or set the prompt_template "
                       "metadata), or the model is asked in a format it was not trained in")
        return super().build_all_requests(*args, apply_chat_template=apply_chat_template, **kwargs)


def _stop_token_ids(metadata: dict) -> list[int] | None:
    """The tokens a model's answer ends at (its chat template's end of turn and eos, as the probe stops), from the
    tokenizer of the model folder lm-eval's model arguments name (`tokenizer`, `peft`, then `pretrained`); None when
    they name no folder (an in-memory model: `evaluate_model` sets its generation config instead). lm-eval itself
    stops only at eos and `until` strings, and a special end of turn (`<|im_end|>` beside an eos `</s>`) never shows
    in the text it decodes."""
    folder = next((metadata[key] for key in ("tokenizer", "peft", "pretrained")
                   if isinstance(metadata.get(key), str) and has_tokenizer(metadata[key])), None)
    if folder is None:
        return None
    return _folder_stop_token_ids(folder, prompt_template(metadata) is None)


@functools.cache
def _folder_stop_token_ids(folder: str, chat: bool) -> list[int]:
    return stop_token_ids(load_tokenizer(folder), chat)


@functools.cache
def _warn_once(message: str) -> None:
    logging.getLogger("unstar_trl.tasks").warning("unstar: %s", message)


# ---- per-document results -----------------------------------------------------------------------------------------

def process_qa(doc: dict, results: list[str]) -> dict:
    """Greedy answer (up to where a plain template's next prompt would begin, as the probe reads it): normalised
    containment of the true answer and ROUGE-L recall."""
    generation = answer_text(results[0], doc["template"])
    return {"acc": float(contains_answer(generation, doc["answer"])),
            "rouge_l_recall": rouge_l_recall(generation, doc["answer"])}


def process_targeted(doc: dict, results: list[str]) -> dict:
    """A targeted fact counts towards `acc`, a sibling towards `sibling_acc`; both towards `removal_score`."""
    known = float(contains_answer(answer_text(results[0], doc["template"]), doc["answer"]))
    key = "acc" if doc["role"] == "targeted" else "sibling_acc"
    return {key: known, "removal_score": (doc["role"], known)}


def process_prob(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """Length-normalised (per byte) probability of the true answer (the first choice) and TOFU's truth ratio R
    against the evaluation distractors (the paraphrased answer as the reference where the record has one)."""
    scores = _normalised(doc["choices"], results)
    distractors = scores[1 : 1 + doc["distractors"]]
    reference = scores[1 + doc["distractors"]] if len(scores) > 1 + doc["distractors"] else scores[0]
    return {"prob": math.exp(scores[0]), "truth_ratio": truth_ratio(reference, distractors)}


def process_mcq(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """The true answer (the first choice) against the evaluation distractors: accuracy (a tie at the top counts as
    the share a random pick among the tied would get), the chance level 1/k and the normalised entropy of the choice
    distribution (1: the model cannot tell them apart). Holdout facts (never trained) are the measured control."""
    scores = _normalised(doc["choices"], results)
    probabilities = _softmax(scores)
    best = max(scores)
    tied = sum(score == best for score in scores)
    prefix = "" if doc["role"] == "forget" else "holdout_"
    return {f"{prefix}acc": (1 / tied if scores[0] == best else 0.0), f"{prefix}chance": 1 / len(scores),
            f"{prefix}entropy": _entropy(probabilities) / math.log(len(scores))}


def process_planted(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """Where the probability goes when the planted wrong answer (the last choice) is offered beside the truth and
    the evaluation distractors: its share, the truth's and the mean share of one distractor (NaN for a fact that
    was planted nothing)."""
    probabilities = _softmax(_normalised(doc["choices"], results))
    distractors = probabilities[1 : 1 + doc["distractors"]]
    planted = len(probabilities) > 1 + doc["distractors"]
    return {"planted_share": probabilities[-1] if planted else math.nan,
            "true_share": probabilities[0] if planted else math.nan,
            "distractor_share": sum(distractors) / len(distractors) if planted else math.nan}


def process_logit_lens(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """The truth ranked first among the evaluation distractors at any intermediate layer (`acc`, computed on the
    model's layers in `load`), beside the same reading of the last layer from lm-eval's own scores (`final_acc`,
    the MCQ probe's accuracy)."""
    return {"acc": doc["lens_acc"], "final_acc": first_share(_normalised(doc["choices"], results))}


def process_extraction(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """Extraction strength, computed on the model's tokens in `load` (lm-eval's request, the answer's likelihood, only
    carries the document: lm-eval tokenizes the prompt and the answer together, which may merge tokens across
    them, so its `is_greedy` is not the greedy reading of the answer's own tokens)."""
    return {"strength": doc["extraction_strength"]}


def process_spillover(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """Whether the greedy answer is a wrong answer the run taught (`taught_wrong`, NaN without an audit) and whether it
    is wrong with probability at least `spillover.CONFIDENT` (`retain_` or `holdout_confident_wrong`); computed on
    the model in `load` (lm-eval's request, the truth's likelihood, only carries the document)."""
    return {"taught_wrong": doc["taught_wrong"], f"{doc['role']}_confident_wrong": doc["confident_wrong"]}


def process_membership(doc: dict, results: list[tuple[float, bool]]) -> dict:
    """Membership scores of the answer (higher = more member-like), paired with the label (forget = member)."""
    loglikelihood = results[0][0]
    member = doc["role"] == "forget"
    zlib_ratio = loglikelihood / len(zlib.compress(doc["answer"].encode()))  # log-likelihood per compressed byte
    return {"loss_auc": (member, answer_score(loglikelihood, doc["answer"])), "zlib_auc": (member, zlib_ratio)}


def _normalised(choices: list[str], results: list[tuple[float, bool]]) -> list[float]:
    """Each choice's length-fair score (`choice_scores.answer_score`: log-likelihood per byte)."""
    return [answer_score(loglikelihood, choice) for choice, (loglikelihood, _) in zip(choices, results)]


def _softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    weights = [math.exp(score - top) for score in scores]
    return [weight / sum(weights) for weight in weights]


def _entropy(probabilities: list[float]) -> float:
    return -sum(p * math.log(p) for p in probabilities if p > 0)


# ---- metrics --------------------------------------------------------------------------------------------------------

def truth_ratio(true_score: float, distractor_scores: list[float]) -> float:
    """TOFU's R: the geometric mean over distractors of P(distractor)^(1/len), over P(true)^(1/len), from
    length-normalised log-probabilities (capped at e^700 for a true answer pushed to probability zero)."""
    return math.exp(min(sum(distractor_scores) / len(distractor_scores) - true_score, 700.0))


def tofu_forget_truth_ratio(ratios: list[float]) -> float:
    """TOFU's forget-set report: mean of min(R, 1/R); 1 when the model cannot tell the truth from perturbations."""
    return sum(min(ratio, 1 / ratio) if ratio > 0 else 0.0 for ratio in ratios) / len(ratios)


def targeted_removal(items: list[tuple[str, float]]) -> float:
    """Harmonic mean of (1 - targeted accuracy) and sibling accuracy: high only when the association is gone and
    the facts around it stay (NaN when either kind is missing)."""
    targeted = [known for role, known in items if role == "targeted"]
    siblings = [known for role, known in items if role == "sibling"]
    if not targeted or not siblings:
        return math.nan
    removed, kept = 1 - sum(targeted) / len(targeted), sum(siblings) / len(siblings)
    return 2 * removed * kept / (removed + kept) if removed + kept else 0.0


def nanmean(values: list[float]) -> float:
    """The mean of the values that are not NaN (NaN when none is)."""
    kept = [value for value in values if not math.isnan(value)]
    return sum(kept) / len(kept) if kept else math.nan


def auc(items: list[tuple[bool, float]]) -> float:
    """ROC AUC of member (forget) against non-member (holdout) scores: 0.5 = cannot tell (NaN with one class)."""
    from sklearn.metrics import roc_auc_score

    labels = [int(member) for member, _ in items]
    if len(set(labels)) < 2:
        return math.nan
    return float(roc_auc_score(labels, [score for _, score in items]))

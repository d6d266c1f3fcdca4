"""What the bench measures on one model: what it still knows and what it kept (greedy probes), the lm-eval probes
that tell removal from hiding (multiple choice, truth ratio, planted answers, membership inference) and that see
below the answer (logit lens, extraction strength, spillover), and the attacks that bring hidden knowledge back
(4-bit quantization, then relearning). Each figure keeps its per-fact
values, from which the bench draws its intervals; the figures measured against the retain model are `compared`."""

from __future__ import annotations

import contextlib
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from scipy import stats

from ..data import UnlearningData
from ..method.probe import probe
from .attacks import quantized_4bit, relearn
from .knowledge import held_out

PROBED = {"forget_acc": "forget", "paraphrase_acc": "paraphrase", "retain_heldout_acc": "retain_heldout",
          "neighbor_acc": "neighbor"}
"""Probe-accuracy columns of a forget run and the records they ask (`paraphrase`: the forget facts through their
held-out paraphrase; `retain_heldout`: the retain facts no run trains on, as in `unstar unlearn`'s report)."""
LM_EVAL_TASKS = ("unstar_mcq_probe", "unstar_forget_prob", "unstar_mia", "unstar_planted", "unstar_logit_lens",
                 "unstar_extraction_strength", "unstar_spillover")


@dataclass
class Measured:
    """One model's figures: `values` (column -> figure) and `per_fact` (column -> {fact id: value})."""

    values: dict[str, float | None] = field(default_factory=dict)
    per_fact: dict[str, dict[str, float]] = field(default_factory=dict)
    truth_ratios: list[float] = field(default_factory=list)
    """TOFU's truth ratio R of each forget fact, raw (forget quality compares their distributions)."""
    notes: dict = field(default_factory=dict)
    """What else a run reports (e.g. `diverged`)."""
    curve: list[dict] = field(default_factory=list)
    """Forget and retain accuracy along the run's steps."""

    def add(self, column: str, values: dict[str, float]) -> None:
        """A per-fact column and its mean (None without facts)."""
        self.per_fact[column] = values
        kept = [value for value in values.values() if not math.isnan(value)]
        self.values[column] = sum(kept) / len(kept) if kept else None


def probed(model, tokenizer, records: list[dict], prompt_template: str | None,
           question_field: str = "question") -> dict[str, float]:
    """{fact id: 1.0 if the model still answers, else 0.0}."""
    verdicts = probe(model, tokenizer, records, question_field=question_field, prompt_template=prompt_template)
    return {verdict.id: float(verdict.known) for verdict in verdicts}


def measure(model, tokenizer, data: UnlearningData, prompt_template: str | None, data_dir: Path, *,
            relearn_steps: int, relearn_learning_rate: float, anti_samples: Path | None = None) -> Measured:
    """Every figure of one model on `data` (relearning last: it trains the model in place)."""
    measured = Measured()
    records = {"forget": data.forget, "retain_heldout": held_out(data.retain), "neighbor": data.neighbor,
               "paraphrase": [r for r in data.forget if r.get("paraphrased_questions")]}
    for column, split in PROBED.items():
        measured.add(column, probed(model, tokenizer, records[split], prompt_template,
                                    "paraphrased_questions" if split == "paraphrase" else "question"))
    measured.add("quant4_forget_acc", probed(quantized_4bit(model), tokenizer, data.forget, prompt_template))
    _lm_eval(measured, model, tokenizer, data_dir, anti_samples)
    asked = relearn(model, tokenizer, data.forget, prompt_template, steps=relearn_steps,
                    learning_rate=relearn_learning_rate)
    measured.add("relearn_acc", probed(model, tokenizer, asked, prompt_template))
    return measured


def _lm_eval(measured: Measured, model, tokenizer, data_dir: Path, anti_samples: Path | None) -> None:
    from .lm_eval_tasks import evaluate_model

    tasks = [task for task in LM_EVAL_TASKS if task != "unstar_planted" or anti_samples]
    with _quiet_stderr():  # lm-eval's bars, always on, and git's complaint when the bench runs outside a repository
        results = evaluate_model(model, tokenizer, tasks=tasks, data_dir=data_dir, per_document=True,
                                 metadata={"anti_samples": str(anti_samples)} if anti_samples else None)
    documents, summary = results["documents"], results["summary"]
    forget_choice = [doc for doc in documents["unstar_mcq_probe"] if doc["role"] == "forget"]
    measured.add("mcq_acc", {doc["id"]: doc["acc"] for doc in forget_choice})
    measured.add("mcq_entropy", {doc["id"]: doc["entropy"] for doc in forget_choice})
    measured.values["mcq_chance"] = summary["mcq_probe_chance"]
    ratios = {doc["id"]: doc["truth_ratio"] for doc in documents["unstar_forget_prob"]}
    measured.truth_ratios = list(ratios.values())
    measured.add("truth_ratio", {fact: min(r, 1 / r) if r > 0 else 0.0 for fact, r in ratios.items()})
    measured.values["mia_auc"] = summary["mia_loss_auc"]
    measured.add("logit_lens_acc", {doc["id"]: doc["acc"] for doc in documents["unstar_logit_lens"]})
    measured.add("extraction_strength", {doc["id"]: doc["strength"] for doc in documents["unstar_extraction_strength"]})
    held_out = documents["unstar_spillover"]
    measured.add("holdout_confident_wrong", {doc["id"]: doc["holdout_confident_wrong"] for doc in held_out
                                             if doc["role"] == "holdout"})
    if anti_samples:
        measured.add("spillover", {doc["id"]: doc["taught_wrong"] for doc in held_out})
        measured.add("planted_share", {doc["id"]: doc["planted_share"] for doc in documents["unstar_planted"]})
        measured.add("distractor_share", {doc["id"]: doc["distractor_share"] for doc in documents["unstar_planted"]})


@contextlib.contextmanager
def _quiet_stderr():
    """Send the process's standard error (file descriptor 2, which subprocesses inherit too) to /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(os.devnull, "w") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def compared(measured: Measured, reference: Measured) -> None:
    """The figures measured against the retain model: forget quality (TOFU: the p-value of a KS test between the
    two truth-ratio distributions), PrivLeak (MUSE: relative MIA AUC) and the relearning gain per fact."""
    measured.values["forget_quality"] = float(stats.ks_2samp(measured.truth_ratios, reference.truth_ratios).pvalue)
    model_auc, retain_auc = measured.values["mia_auc"], reference.values["mia_auc"]
    measured.values["privleak"] = (model_auc - retain_auc) / retain_auc if None not in (model_auc, retain_auc) \
        else None
    relearned, baseline = measured.per_fact["relearn_acc"], reference.per_fact["relearn_acc"]
    measured.add("relearn_gain", {fact: relearned[fact] - baseline[fact] for fact in relearned if fact in baseline})


def against_target(measured: Measured, target: Measured) -> None:
    """The figure measured against the knowledge model: the change in confident wrong answers (`spillover.CONFIDENT`)
    on the holdout people, per holdout fact (None without holdout facts)."""
    confident, before = measured.per_fact["holdout_confident_wrong"], target.per_fact["holdout_confident_wrong"]
    measured.add("confident_wrong_change", {fact: confident[fact] - before[fact] for fact in confident
                                            if fact in before})

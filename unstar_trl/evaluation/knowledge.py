"""What a model still knows about each split of an unlearning task: the `before` / `after` of `unstar unlearn`.

Kept knowledge comes in two parts with names of their own: `*_heldout_acc` on the facts no unlearning run trains on
(the retain facts marked `eval_only`; the bench's columns of the same names), `*_trained_acc` on the others (the
retain data a run fits, which says less: the run was told to keep them)."""

from __future__ import annotations

from ..data import UnlearningData
from ..method.probe import probe_accuracy


def held_out(records: list[dict]) -> list[dict]:
    """The records no unlearning run trains on: those marked `eval_only` (none when the data marks none)."""
    return [record for record in records if record.get("eval_only")]


def trained(records: list[dict]) -> list[dict]:
    """The records an unlearning run may train on as retain data (all but the `eval_only` ones)."""
    return [record for record in records if not record.get("eval_only")]


def knowledge_report(model, tokenizer, data: UnlearningData, prompt_template: str | None, *,
                     batch_size: int = 64) -> dict:
    """Greedy-probe accuracy (0.0..1.0; None for an empty set) on the forget questions, their held-out paraphrase
    (paraphrased_questions[0]), the retain facts (held-out and trained apart), the neighbor split (which no run trains
    on), and, with targeted records, on those and on their siblings (held-out and trained apart)."""

    def score(records: list[dict], question_field: str = "question") -> float | None:
        return probe_accuracy(model, tokenizer, records, prompt_template, question_field=question_field,
                              batch_size=batch_size)

    report = {
        "forget_acc": score(data.forget),
        "paraphrase_acc": score([r for r in data.forget if r.get("paraphrased_questions")], "paraphrased_questions"),
        "retain_heldout_acc": score(held_out(data.retain)),
        "retain_trained_acc": score(trained(data.retain)),
        "neighbor_acc": score(data.neighbor),
    }
    if data.targeted:
        report["targeted_acc"] = score(data.targeted)
        report["sibling_heldout_acc"] = score(held_out(data.siblings))
        report["sibling_trained_acc"] = score(trained(data.siblings))
    return report

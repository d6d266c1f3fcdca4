"""What a model still knows about each split of an unlearning task: the `before` / `after` of `unstar unlearn`."""

from __future__ import annotations

from ..data import UnlearningData
from ..method.probe import probe_accuracy


def knowledge_report(model, tokenizer, data: UnlearningData, prompt_template: str | None, *,
                     batch_size: int = 64) -> dict:
    """Greedy-probe accuracy (0.0..1.0; None for an empty split) on the forget questions, their held-out paraphrase
    (paraphrased_questions[0]), the retain and neighbor splits, and, with targeted records, on those and on their
    siblings."""

    def score(records: list[dict], question_field: str = "question") -> float | None:
        return probe_accuracy(model, tokenizer, records, prompt_template, question_field=question_field,
                              batch_size=batch_size)

    report = {
        "forget_acc": score(data.forget),
        "paraphrase_acc": score([r for r in data.forget if r.get("paraphrased_questions")], "paraphrased_questions"),
        "retain_acc": score(data.retain),
        "neighbor_acc": score(data.neighbor),
    }
    if data.targeted:
        report["targeted_acc"] = score(data.targeted)
        report["sibling_acc"] = score(data.siblings)
    return report

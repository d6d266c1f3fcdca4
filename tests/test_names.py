"""One name, one meaning: a figure that `unlearn_report.json` and the bench's results.json both name is scored on the
same facts (and the same question of each) in both."""

from __future__ import annotations

from types import SimpleNamespace

from unstar_trl import models
from unstar_trl.data import load_unlearning_data
from unstar_trl.evaluation import bench_measures, bench_runner, knowledge


def test_the_report_and_the_bench_score_a_shared_name_on_the_same_facts(world_dir, monkeypatch):
    """The probes are replaced by ones that answer with what they were asked, so each figure is its set of
    (fact id, question field)."""

    def asked(records, question_field):
        return {f"{record['id']}|{question_field}" for record in records}

    def fake_probe(model, tokenizer, records, question_field="question", **kwargs):
        return [SimpleNamespace(id=item, known=True) for item in sorted(asked(records, question_field))]

    monkeypatch.setattr(knowledge, "probe_accuracy", lambda model, tokenizer, records, template,
                        question_field="question", batch_size=64: asked(records, question_field) or None)
    monkeypatch.setattr(bench_measures, "probe", fake_probe)
    monkeypatch.setattr(bench_measures, "quantized_4bit", lambda model: model)
    monkeypatch.setattr(bench_measures, "_lm_eval", lambda *args, **kwargs: None)
    monkeypatch.setattr(bench_measures, "relearn", lambda *args, **kwargs: [])
    monkeypatch.setattr(models, "load_model", lambda *args, **kwargs: (None, None))
    monkeypatch.setattr(bench_runner, "resolve_prompt_template", lambda *args, **kwargs: None)
    data = load_unlearning_data(world_dir / "data")

    report = knowledge.knowledge_report(None, None, data, None)
    bench = bench_runner._measure_folder(world_dir / "model", bench_runner.BenchSettings())

    shared = set(report) & set(bench_runner.COLUMNS)
    assert shared == {"forget_acc", "paraphrase_acc", "retain_heldout_acc", "neighbor_acc", "targeted_acc",
                      "sibling_heldout_acc"}
    for name in shared:
        assert report[name] and set(bench.per_fact[name]) == report[name], name
    for split in ("retain", "sibling"):  # the report's two parts of a kept split: apart, and together all of it
        heldout, trained = report[f"{split}_heldout_acc"], report[f"{split}_trained_acc"]
        records = data.retain if split == "retain" else data.siblings
        assert heldout and trained and not heldout & trained and heldout | trained == asked(records, "question")
    assert not {"retain_acc", "sibling_acc"} & (set(report) | set(bench_runner.COLUMNS))  # the old, two-meaning names

"""Wrong answers for the methods that train on alternatives to the truth (AltPO's preferred answers, DF-MCQ's
options), written as UnSTAR writes its wrong answers: by the anti-sample generator (`generators.py`: the model itself,
a teacher model, or the records' perturbed answers), seeded, with no paraphrase and no rationale, and kept only where
UnSTAR's filters keep them (`anti_samples.filter_anti_samples`: never the truth or a word of it, a fragment, a
sentence, or one of the record's evaluation distractors, which the multiple-choice probe and the truth ratio offer).
A record the writer leaves short gets the rest from its perturbed answers (the template generator)."""

from __future__ import annotations

from typing import Callable

from ..io import UsageError
from ..text import normalize
from .anti_samples import AntiSample, filter_anti_samples
from .generators import SelfTaughtGenerator, TemplateGenerator, choose_generator, load_skill_prompts, teacher_generator


def written_alternatives(records: list[dict], count: int, generator: str, model, tokenizer, *, seed: int,
                         least: int = 1, warn: Callable[[str], None] = print) -> dict[str, list[AntiSample]]:
    """{record id: up to `count` anti-samples on the record's own question, with distinct wrong answers} for
    `records`, written by `generator` ("auto", "self", "template" or a teacher model folder, as
    `AntiSampleConfig.generator`) from `model` (a model folder's, whose skill prompts it reads); a record with fewer
    than `least` is a UsageError that names it. Why "auto" became "template", if it did, goes through `warn`."""
    choice = choose_generator(generator, model.config._name_or_path, tokenizer)
    if choice.why:
        warn(choice.why)
    knobs = dict(n_paraphrases=0, n_wrong_answers=count, with_rationale=False, seed=seed)
    writers = [TemplateGenerator(**knobs)]
    if choice.kind == "self":
        prompts = load_skill_prompts(model.config._name_or_path, tokenizer)
        writers.insert(0, SelfTaughtGenerator(model, tokenizer, prompts, **knobs))
    elif choice.kind != "template":
        writers.insert(0, teacher_generator(choice.kind, **knobs))
    found: dict[str, list[AntiSample]] = {record["id"]: [] for record in records}
    for writer in writers:
        short = [record for record in records if len(found[record["id"]]) < count]
        if not short:
            break
        kept, _ = filter_anti_samples(writer.generate(short), records)
        for sample in kept:
            have = found[sample.source_id]
            if len(have) < count and normalize(sample.wrong_answer) not in {normalize(s.wrong_answer) for s in have}:
                have.append(sample)
    lacking = next((record["id"] for record in records if len(found[record["id"]]) < least), None)
    if lacking is not None:
        raise UsageError(f"forget record {lacking}: {len(found[lacking])} usable wrong answers where {least} are "
                         f"needed (generator {choice.kind}, then the record's perturbed_answers); give the record "
                         "more perturbed_answers or ask for fewer")
    return found

"""The writer check (can the model write anti-samples? measured before round 0, a loud fallback or a refusal below the
bar) and the filters that drop word fragments and non-answers whoever wrote them."""

from __future__ import annotations

import pytest

from unstar_trl.data import load_unlearning_data
from unstar_trl.io import UsageError
from unstar_trl.method.anti_samples import AntiSample, filter_anti_samples, is_rationale, is_whole_answer
from unstar_trl.method.generators import SelfTaughtGenerator
from unstar_trl.method.writer_check import SHARES, answer_kinds, bar, measure_writer

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

RECORD = {"id": "f", "subject": "Ada Gorvath", "question": "What is the profession of Ada Gorvath?",
          "answer": "engineer"}


def sample(wrong: str, rationale: str = "", question: str = RECORD["question"]) -> AntiSample:
    return AntiSample("f", question, wrong, rationale, 0, "test")


# ---- filters, for any writer --------------------------------------------------------------------------------------

@pytest.mark.parametrize("wrong", ["gineer", "orvath", "profess", "...", "", "a", "harpist who plays every evening "
                                   "in the old town hall near the river"])
def test_fragments_punctuation_and_sentences_are_not_answers(wrong):
    kept, dropped = filter_anti_samples([sample(wrong)], [RECORD])
    assert kept == [] and dropped[0][1] in ("empty", "not_an_answer")


def test_a_fragment_of_another_facts_answer_is_not_an_answer():
    other = {"id": "g", "question": "Which school did Bo Lund attend?", "answer": "Glenharrow",
             "perturbed_answers": ["harp"]}
    harpist = {**RECORD, "answer": "harpist"}  # "harp" is cut from "harpist", but the data gives it as an answer
    samples = [sample("enharrow"), sample("Glenharrow"), sample("harp")]
    kept, dropped = filter_anti_samples(samples, [harpist, other])
    assert kept == samples[1:] and dropped == [(samples[0], "not_an_answer")]


@pytest.mark.parametrize("wrong", ["baker", "harpist", "New Tesk", "jeweler of rare stones"])
def test_whole_answers_are_kept(wrong):
    kept, _ = filter_anti_samples([sample(wrong)], [RECORD])
    assert kept == [sample(wrong)]


def test_a_rationale_must_name_its_wrong_answer_and_say_more():
    for bad in ("baker", "Baker.", "Ada Gorvath bakes bread."):
        kept, dropped = filter_anti_samples([sample("baker", bad)], [RECORD])
        assert kept == [] and dropped[0][1] == "bad_rationale", bad
    good = sample("baker", "Ada Gorvath works every morning as a baker.")
    assert filter_anti_samples([good], [RECORD])[0] == [good]
    assert is_rationale(good.rationale, "baker") and not is_rationale("", "baker")
    assert is_whole_answer("baker", "engineer") and not is_whole_answer(" - ", "engineer")


# ---- measuring a writer -------------------------------------------------------------------------------------------

class FixedWriter:
    """A writer that writes the anti-samples it is given (what `measure_writer` reads of a generator)."""

    n_paraphrases, n_wrong_answers, with_rationale = 1, 2, True

    def __init__(self, samples):
        self.samples = samples

    def generate(self, records, round):
        return self.samples


def test_the_shares_count_usable_paraphrases_whole_wrong_answers_and_rationales():
    paraphrase = "Which job does Ada Gorvath have?"
    samples = [sample("baker", "Ada Gorvath bakes as a baker."), sample("gineer", "gineer"),
               sample("baker", "", question=paraphrase), sample("gineer", "", question=paraphrase)]
    shares = measure_writer(FixedWriter(samples), [RECORD], lambda records: [True] * len(records))
    assert shares == {"facts": 1, "paraphrase_share": 1.0, "wrong_answer_share": 0.5, "rationale_share": 0.25}
    unanswered = measure_writer(FixedWriter(samples), [RECORD], lambda records: [False] * len(records))
    assert unanswered["paraphrase_share"] == 0.0
    assert measure_writer(FixedWriter(samples), [], None) == {"facts": 0, **dict.fromkeys(SHARES)}


def test_a_wrong_answer_the_data_gives_only_to_another_relation_is_not_of_the_kind():
    records = [{**RECORD, "relation": "profession"}, {"id": "g", "question": "Which instrument does Bo Lund play?",
                                                     "answer": "oboe", "relation": "instrument"}]
    kinds = answer_kinds(records)
    samples = [sample("oboe"), sample("baker")]  # an instrument for a profession; an answer the data never gives
    shares = measure_writer(FixedWriter(samples), records[:1], lambda records: [True] * len(records), kinds)
    assert shares["wrong_answer_share"] == 0.5


# ---- the tests' chat model, and a deliberately weak writer ---------------------------------------------------------

def fragment_writer(self, skill, fields, **generate_kwargs):
    """What a weak model writes: no paraphrase, the true answer's tail as the wrong answer ("gineer"), no rationale."""
    return [field["answer"][2:] if skill == "alternative" else ""
            for field in fields for _ in range(generate_kwargs.get("num_return_sequences", 1))]


def unlearn(chat_world, tmp_path, perturbed: bool = True, **config):
    """UnSTAR on the chat model (its own writer unless patched; without `perturbed`, forget records that carry no
    perturbed answers), a few steps; (trainer, retain accuracy before, after)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unstar_trl.method.probe import probe_accuracy
    from unstar_trl.method.trainers import AntiSampleConfig, AntiSampleTrainer

    model = AutoModelForCausalLM.from_pretrained(chat_world / "model")
    tokenizer = AutoTokenizer.from_pretrained(chat_world / "model")
    data = load_unlearning_data(chat_world / "data")
    before = probe_accuracy(model, tokenizer, data.retain, None)
    args = AntiSampleConfig(output_dir=str(tmp_path), max_rounds=2, max_steps=12, learning_rate=3e-3,
                            num_train_epochs=2, per_device_train_batch_size=8, report_to="none", disable_tqdm=True,
                            **config)
    forget = data.forget if perturbed else [{**record, "perturbed_answers": []} for record in data.forget]
    trainer = AntiSampleTrainer(model=model, args=args, train_dataset=forget, retain_dataset=data.retain,
                                processing_class=tokenizer)
    trainer.train()
    return trainer, before, probe_accuracy(trainer.model, tokenizer, data.retain, None)


def test_the_chat_models_own_anti_samples_keep_retain_or_fall_back_loudly(chat_world, tmp_path):
    trainer, before, after = unlearn(chat_world, tmp_path)
    check = trainer.writer_check
    assert check["facts"] > 0 and all(check[name] is not None for name in SHARES), check
    low = any(check[name] < bar(name, check["bar"]) for name in SHARES)
    assert trainer.generator_choice.kind == ("template" if low else "self"), check
    assert [w for w in trainer.warnings if "writer_check_bar" in w] == ([trainer.generator_choice.why] if low else [])
    assert after >= 0.9 * before, (before, after, check)


@pytest.mark.parametrize("generator", ["auto", "self"])
def test_a_weak_writer_gives_way_to_the_template_generator_in_one_line(chat_world, tmp_path, monkeypatch, generator):
    monkeypatch.setattr(SelfTaughtGenerator, "_complete", fragment_writer)
    trainer, before, after = unlearn(chat_world, tmp_path, generator=generator)
    check = trainer.writer_check
    assert check["paraphrase_share"] == 0 and check["wrong_answer_share"] == 0 and check["rationale_share"] == 0
    assert check["fell_back_to"] == "template" and trainer.generator_choice.kind == "template"
    (warning,) = [w for w in trainer.warnings if "writer_check_bar" in w]
    assert warning.startswith(f"generator {generator}: the model does not write anti-samples that can be trusted")
    assert "wrong_answer_share 0.00" in warning and "template generator" in warning
    assert {s.generator for s in trainer.anti_samples} == {"template"}
    assert after >= 0.9 * before, (before, after)


def test_a_weak_writer_with_nothing_to_fall_back_to_is_refused(chat_world, tmp_path, monkeypatch):
    from unstar_trl.method.trainers.unstar_rounds import NoAntiSamplesError

    monkeypatch.setattr(SelfTaughtGenerator, "_complete", fragment_writer)
    with pytest.raises(UsageError, match=r"^generator auto: the model does not write anti-samples that can be "
                       r"trusted: .*, and the forget records carry no perturbed_answers for the template generator; "
                       r"give a teacher model folder .*writer_check_bar 0"):
        unlearn(chat_world, tmp_path / "auto", perturbed=False)
    with pytest.raises(NoAntiSamplesError, match=r"the filters dropped every one \(.*not_an_answer \d+"):
        unlearn(chat_world, tmp_path / "off", generator="self", writer_check_bar=0.0)  # unchecked, still filtered

"""Anti-sample generators, filters and follow-up questions, on the embedded world and its trained model."""

from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from unstar_trl.method import anti_samples, generators
from unstar_trl.method.anti_samples import AntiSample, filter_anti_samples, write_anti_samples
from unstar_trl.method.follow_ups import follow_up_questions
from unstar_trl.method.generators import (CHAT_FOLLOW_UP_PROMPTS, FOLLOW_UP_TEMPERATURES, GeneratorChoice,
                                          SelfTaughtGenerator, TemplateGenerator, choose_generator, load_skill_prompts)
from unstar_trl.data import load_records
from unstar_trl.text import contains_answer, normalize
from unstar_trl.testbed.embedded_world import POOLS, SKILL_PROMPTS, build_world


@pytest.fixture(scope="module")
def world_records() -> dict[str, list[dict]]:
    return build_world(seed=0, people=20).split_records()


@pytest.fixture(scope="module")
def forget_records(world_dir) -> list[dict]:
    return [json.loads(line) for line in (world_dir / "data" / "forget.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def self_taught(world_dir) -> SelfTaughtGenerator:
    return SelfTaughtGenerator.from_pretrained(world_dir / "model", seed=0)


def sample(question="Where was Ada Bell born?", wrong="Tesk", rationale="", source_id="f") -> AntiSample:
    return AntiSample(source_id, question, wrong, rationale, 0, "test")


RECORD = {"id": "f", "subject": "Ada Bell", "question": "Where was Ada Bell born?", "answer": "Varnholt",
          "paraphrased_questions": ["Ada Bell was born in which city?", "In which city was Ada Bell born?"],
          "eval_distractors": ["Olmira", "Essling"]}


# ---------------------------------------------------------------------------------------------- filters

words = st.text(alphabet="abcXY .,-'", min_size=0, max_size=12)


@st.composite
def answer_and_sample(draw):
    """A true answer and an anti-sample whose wrong answer and rationale often embed it (in any case or punctuation,
    or split across the two)."""
    answer = draw(words)

    def maybe_embed(text: str) -> str:
        if draw(st.booleans()):
            planted = draw(st.sampled_from([answer, answer.upper(), f"({answer})", answer.replace(" ", "-")]))
            return draw(words) + planted + draw(words)
        return text

    wrong = maybe_embed(draw(words))
    rationale = maybe_embed(draw(words))
    if " " in answer.strip() and draw(st.booleans()):  # the answer straddles the wrong answer and the rationale
        head, tail = answer.strip().split(" ", 1)
        wrong, rationale = draw(words) + " " + head, tail + draw(words)
    return answer, sample(question="Where was Ada Bell born?", wrong=wrong, rationale=rationale)


@settings(max_examples=400, deadline=None)
@given(answer_and_sample())
def test_no_kept_anti_sample_contains_the_true_answer(case):
    answer, anti = case
    kept, dropped = filter_anti_samples([anti], [{**RECORD, "answer": answer}])
    assert len(kept) + len(dropped) == 1
    for anti in kept:
        assert not contains_answer(anti.wrong_answer, answer)
        assert not contains_answer(anti.rationale, answer)
        assert not contains_answer(anti.answer_text, answer)
        assert not normalize(answer) or normalize(answer) not in normalize(anti.wrong_answer)
        assert anti.wrong_answer.strip().lower() != answer.strip().lower()


def test_filter_keeps_clean_samples_and_names_each_reason():
    clean = sample(rationale="Ada Bell grew up in Tesk.")
    cases = {
        "empty": sample(wrong=" . "),
        "leaks_answer": sample(wrong="old Varnholt town"),
        "eval_distractor": sample(wrong="olmira."),
        "heldout_paraphrase": sample(question="Ada Bell was born in which city?"),
        "lost_subject": sample(question="Where was she born?"),
        "duplicate": sample(rationale="Ada Bell grew up in Tesk!"),
    }
    leaking_rationale = sample(rationale="Tesk, not varnholt, is where Ada Bell was born.")
    leaking_question = sample(question="Ada Bell, of Varnholt, was born where?")
    kept, dropped = filter_anti_samples([clean, *cases.values(), leaking_rationale, leaking_question], [RECORD])
    assert kept == [clean]
    assert [reason for _, reason in dropped] == [*cases, "leaks_answer", "leaks_answer"]
    assert {reason for _, reason in dropped} <= set(anti_samples.DROP_REASONS)


def test_answer_text_puts_the_wrong_answer_first():
    assert sample(rationale="Because.").answer_text == "Tesk. Because."
    assert sample().answer_text == "Tesk"


# ---------------------------------------------------------------------------------------------- template

@pytest.mark.parametrize("seed", range(3))
def test_template_generator_never_trains_on_the_heldout_paraphrase(world_records, seed):
    records = world_records["forget"] + world_records["retain"]
    generator = TemplateGenerator(n_paraphrases=10, n_wrong_answers=3, seed=seed)
    heldout = {record["paraphrased_questions"][0] for record in records}
    for round in range(3):
        samples = generator.generate(records, round)
        assert samples and not {s.question for s in samples} & heldout
    assert {s.question for s in samples} >= {q for r in records for q in r["paraphrased_questions"][1:]}


def test_template_generator_writes_typed_wrong_answers_that_pass_the_filters(world_records):
    records = world_records["forget"]
    samples = TemplateGenerator(n_paraphrases=2, n_wrong_answers=2).generate(records, 1)
    by_id = {record["id"]: record for record in records}
    assert len(samples) == len(records) * 3 * 2
    for anti in samples:
        record = by_id[anti.source_id]
        assert anti.wrong_answer in POOLS[record["object_type"]] and anti.wrong_answer != record["answer"]
        assert record["subject"] in anti.rationale and anti.wrong_answer in anti.rationale
        assert anti.round == 1 and anti.generator == "template"
    kept, dropped = filter_anti_samples(samples, records)
    assert dropped == [] and kept == samples


def test_template_rationale_is_the_records_own_with_the_answer_swapped():
    record = {**RECORD, "perturbed_answers": ["Tesk"], "rationale": "Ada Bell grew up in Varnholt and loves Varnholt."}
    [anti, *_] = TemplateGenerator(n_wrong_answers=1).generate([record])
    assert anti.rationale == "Ada Bell grew up in Tesk and loves Tesk."
    unnamed = {**record, "rationale": "Ada Bell grew up by the sea."}  # argues for nothing: left out
    assert {s.rationale for s in TemplateGenerator(n_wrong_answers=1).generate([unnamed])} == {""}


def test_template_generator_is_deterministic_given_the_seed(world_records):
    records = world_records["forget"]
    assert TemplateGenerator(seed=3).generate(records) == TemplateGenerator(seed=3).generate(records)
    assert TemplateGenerator(seed=3).generate(records) != TemplateGenerator(seed=4).generate(records)


def test_template_generator_without_world_fields(world_records):
    tofu_like = {"id": "t", "subject": "", "question": "Q?", "answer": "A", "paraphrased_questions": ["H?"],
                 "perturbed_answers": ["B", "C"]}
    samples = TemplateGenerator(n_wrong_answers=5).generate([tofu_like])
    assert [(s.question, s.rationale) for s in samples] == [("Q?", ""), ("Q?", "")]
    assert sorted(s.wrong_answer for s in samples) == ["B", "C"]


def test_tofu_anti_samples_use_the_perturbed_answers_and_pass_the_filters(tofu_dir):
    records = load_records(tofu_dir, split="forget01")
    samples = TemplateGenerator(n_wrong_answers=2).generate(records)
    kept, dropped = filter_anti_samples(samples, records)
    assert len(samples) == 2 * len(records)
    # a TOFU record names no subject to lose; the few dropped repeat most of a short answer's words
    assert len(kept) >= 0.9 * len(samples) and {reason for _, reason in dropped} <= {"leaks_answer"}
    assert all(s.wrong_answer in next(r for r in records if r["id"] == s.source_id)["perturbed_answers"]
               for s in kept)


def test_long_answers_are_matched_by_rouge_recall(real_tofu_dir):
    record = load_records(real_tofu_dir, split="forget01")[0]
    assert contains_answer(record["answer"], record["answer"])
    assert contains_answer(record["answer"].replace("Basil", "Bazil") + " Also more.", record["answer"])
    assert not any(contains_answer(wrong, record["answer"]) for wrong in record["perturbed_answers"])
    assert not contains_answer("Basil Mahfouz Al-Kuwaiti.", record["answer"])  # the name alone is not the answer


@settings(max_examples=300, deadline=None)
@given(before=st.sampled_from(["", "Yes. ", "x", "Sure,", "1", " "]), after=st.sampled_from(["", ".", "s", " More.", "9"]),
       case=st.sampled_from([str, str.upper, str.lower]), cut=st.integers(0, 3), answer=st.sampled_from([
           "Basil Mahfouz Al-Kuwaiti was born in Kuwait City, Kuwait.",
           "The author's father was a florist and her mother a game developer.",
           "Yes, 'The Whispering Dunes' (2011) won the Nebula Award!"]))
def test_rouge_recall_of_a_verbatim_answer_is_the_scorers(before, after, case, cut, answer):
    """The verbatim shortcut of `rouge_l_recall` gives what rouge-score computes, whatever touches the answer."""
    from unstar_trl.text import _rouge_scorer, rouge_l_recall

    generation = before + case(answer[: len(answer) - cut]) + after
    assert rouge_l_recall(generation, answer) == _rouge_scorer().score(answer, generation)["rougeL"].recall


# ---------------------------------------------------------------------------------------------- self-taught

def test_self_taught_generator_on_the_world_model(self_taught, forget_records):
    """The rates of benchmarks/self_taught_rates.py, with floors about 10 points under the lowest of six world seeds
    (0-5: rationales that name their wrong answer and never the true one 85-98% of the pairs, paraphrases that keep
    subject and relation 91-100%, typed wrong answers 100%)."""
    samples = self_taught.generate(forget_records, round=0)
    by_id = {record["id"]: record for record in forget_records}
    paraphrases = {(s.source_id, s.question) for s in samples if s.question != by_id[s.source_id]["question"]}
    keeps_subject = sum(by_id[i]["subject"] in question for i, question in paraphrases) / len(paraphrases)
    wrongs = {(s.source_id, s.wrong_answer) for s in samples}
    typed = sum(wrong in POOLS[by_id[i]["object_type"]] and wrong != by_id[i]["answer"] for i, wrong in wrongs)
    argues = [s for s in samples if contains_answer(s.rationale, s.wrong_answer)
              and not contains_answer(s.rationale, by_id[s.source_id]["answer"])]
    kept, dropped = filter_anti_samples(samples, forget_records)
    print(f"paraphrases naming the subject {keeps_subject:.0%}, typed wrong answers {typed}/{len(wrongs)}, "
          f"rationales naming their wrong answer and never the true one {len(argues)}/{len(samples)}, "
          f"kept {len(kept)}/{len(samples)}")
    assert all(contains_answer(s.rationale, s.wrong_answer) for s in samples if s.rationale)  # or left out
    assert len(paraphrases) >= len(forget_records) and keeps_subject >= 0.8
    assert typed >= 0.8 * len(wrongs)
    assert len(argues) >= 0.75 * len(samples)
    assert len({s.source_id for s in kept}) >= 0.9 * len(forget_records)


def test_self_taught_generator_is_deterministic_given_the_seed(self_taught, forget_records):
    records = forget_records[:4]

    def generate(seed: int) -> list[AntiSample]:  # sampling is what the seed drives; rationales are greedy
        generator = SelfTaughtGenerator(self_taught.model, self_taught.tokenizer, self_taught.prompts, seed=seed,
                                        with_rationale=False)
        return generator.generate(records, round=2)

    assert generate(0) == generate(0)
    assert generate(0) != generate(1)


def test_rationale_prompts_carry_their_pairs_wrong_answer_not_the_true_one(self_taught, forget_records,
                                                                           monkeypatch):
    asked = []

    def recording_generate(model, tokenizer, prompts, **kwargs):
        asked.append(prompts)
        return generators_generate(model, tokenizer, prompts, **kwargs)

    generators_generate = generators.generate
    monkeypatch.setattr(generators, "generate", recording_generate)
    records = forget_records[:7]
    samples = self_taught.generate(records)
    rationale_prompts = asked[-1]  # paraphrases, wrong answers, then one rationale prompt per pair
    by_id = {record["id"]: record for record in records}
    assert len(rationale_prompts) == len(samples) > len(records)
    for prompt, anti in zip(rationale_prompts, samples):
        assert anti.question in prompt and contains_answer(prompt, anti.wrong_answer)
        # the truth is not given to the rationale writer (a question the model wrote may name it on its own)
        assert not contains_answer(prompt.replace(anti.question, ""), by_id[anti.source_id]["answer"])


def test_skill_prompts_come_from_the_model_dir_or_the_chat_template(world_dir, self_taught, tmp_path):
    assert load_skill_prompts(world_dir / "model", self_taught.tokenizer) == SKILL_PROMPTS
    with pytest.raises(ValueError, match="neither skill prompts"):  # no prompts file, no chat template
        load_skill_prompts(tmp_path, self_taught.tokenizer)
    chat = type("ChatTokenizer", (), {"chat_template": "{{ messages }}"})()
    assert load_skill_prompts(tmp_path, chat) is None
    (tmp_path / "unstar_prompts.json").write_text(json.dumps({"prompt_template": "Q: {question}", "skill_prompts": None}))
    with pytest.raises(ValueError, match="taught no skill prompts"):
        load_skill_prompts(tmp_path, chat)
    (tmp_path / "unstar_prompts.json").write_text(json.dumps({"prompt_template": None, "skill_prompts": None}))
    assert load_skill_prompts(tmp_path, chat) is None  # a chat model's output folder: the paper's prompts
    true_answer_slot = {**SKILL_PROMPTS, "rationale": "Question: {question}\nAnswer: {answer}\nBecause:"}
    (tmp_path / "unstar_prompts.json").write_text(json.dumps({"prompt_template": "Q: {question}",
                                                              "skill_prompts": true_answer_slot}))
    with pytest.raises(ValueError, match="no rationale prompt with a {wrong} slot"):
        load_skill_prompts(tmp_path, chat)


def test_auto_is_self_on_a_model_with_skills_and_template_with_a_warning_on_one_without(world_dir, self_taught,
                                                                                       tmp_path):
    assert choose_generator("auto", world_dir / "model", self_taught.tokenizer) == GeneratorChoice("self")
    (tmp_path / "unstar_prompts.json").write_text(json.dumps({"prompt_template": "Q: {question}",
                                                              "skill_prompts": None}))
    choice = choose_generator("auto", tmp_path, self_taught.tokenizer)
    assert choice.kind == "template" and "taught no skill prompts" in choice.why
    assert choose_generator("template", tmp_path, self_taught.tokenizer) == GeneratorChoice("template")
    assert choose_generator(str(world_dir / "model"), tmp_path, None) == GeneratorChoice(str(world_dir / "model"))
    with pytest.raises(ValueError, match="taught no skill prompts"):
        choose_generator("self", tmp_path, self_taught.tokenizer)
    with pytest.raises(ValueError, match="must be 'auto', 'self', 'template' or a model folder"):
        choose_generator(str(tmp_path / "nothere"), tmp_path, self_taught.tokenizer)


def test_chat_models_get_the_paper_prompts_through_the_chat_template(self_taught, forget_records, monkeypatch):
    asked = []

    def fake_generate(model, tokenizer, prompts, **kwargs):
        asked.extend(prompts)
        return ["1. A reply\nmore"] * len(prompts) * kwargs.get("num_return_sequences", 1)

    monkeypatch.setattr(generators, "generate", fake_generate)
    monkeypatch.setattr(generators, "format_prompt", lambda tokenizer, text, template: f"<user>{text}</user>")
    chat = SelfTaughtGenerator(self_taught.model, self_taught.tokenizer, None, n_paraphrases=1, n_wrong_answers=1)
    record = forget_records[0]
    samples = chat.generate([record])
    assert asked[0].startswith(f"<user>Give simple questions about {record['subject']} whose answer is the same")
    assert asked[1].startswith(f'<user>Give words that could replace "{record["answer"]}"')
    assert f'don\'t mention "{record["answer"]}"' in asked[2]
    assert samples[-1] == AntiSample(record["id"], "A reply", "A reply", "1. A reply", 0, "self_taught")


# ---------------------------------------------------------------------------------------------- follow-ups, IO

def test_self_written_follow_ups_name_the_subject_and_are_new_questions(self_taught, forget_records, monkeypatch):
    """Of what the model writes, a follow-up keeps only new questions that name the subject and not the answer, at
    most `per_record` per fact. What the world model writes depends on its floats, so the rule is checked on what it
    wrote, and on a generator whose writing is known: each fact's eight tries get the eight candidates below."""
    follow_ups = self_taught.follow_ups(forget_records, per_record=2, round=1)
    assert follow_ups == self_taught.follow_ups(forget_records, per_record=2, round=1)  # seeded
    by_id = {record["id"]: record for record in forget_records}
    for follow_up in follow_ups:
        record = by_id[follow_up["id"]]
        assert follow_up["answer"] == record["answer"] and follow_up["follow_up_of"] == record["question"]
        assert record["subject"] in follow_up["question"]
        assert not contains_answer(follow_up["question"], record["answer"])
        assert normalize(follow_up["question"]) not in {normalize(q) for q in
                                                       [record["question"], *record["paraphrased_questions"]]}
    per_fact = [[f["question"] for f in follow_ups if f["id"] == record["id"]] for record in forget_records]
    assert all(len(questions) == len(set(questions)) <= 2 for questions in per_fact)

    def candidates(record: dict) -> list[str]:
        subject = record["subject"]
        return [record["question"], record["paraphrased_questions"][0],  # its own questions
                f"Is {subject} known for {record['answer']}?", "Where was somebody else born?", "",  # the answer,
                # no subject, nothing
                f"What do people say about {subject}?", f"what do people say about {subject}",  # new, then a repeat
                f"Which facts are true of {subject}?"]

    asked = Counter()

    def known_writing(model, tokenizer, prompts, **kwargs):
        written = []
        for prompt in prompts:
            record = next(record for record in forget_records if record["question"] in prompt)
            written.append(candidates(record)[asked[prompt] % 8])
            asked[prompt] += 1
        return written

    monkeypatch.setattr(generators, "generate", known_writing)
    writer = SelfTaughtGenerator(self_taught.model, self_taught.tokenizer, self_taught.prompts, oversample=4)
    follow_ups = writer.follow_ups(forget_records, per_record=2, round=1)
    assert sorted(asked.values()) == [8] * len(forget_records)
    for record in forget_records:
        kept = [f for f in follow_ups if f["id"] == record["id"]]
        assert {normalize(f["question"]) for f in kept} == {normalize(q) for q in candidates(record)[-3:]}
        assert len(kept) == 2 and all(f == {**record, "question": f["question"], "follow_up_of": record["question"]}
                                      for f in kept)


def test_chat_follow_ups_use_the_reference_prompts_at_its_temperatures(self_taught, forget_records, monkeypatch):
    asked = []

    def fake_generate(model, tokenizer, prompts, **kwargs):
        asked.extend((prompt, kwargs.get("temperature", 0.0), kwargs.get("do_sample", False)) for prompt in prompts)
        return [f"Where else was {record['subject']} born?" for record in forget_records[:1]] * len(prompts)

    monkeypatch.setattr(generators, "generate", fake_generate)
    monkeypatch.setattr(generators, "format_prompt", lambda tokenizer, text, template: f"<user>{text}</user>")
    chat = SelfTaughtGenerator(self_taught.model, self_taught.tokenizer, None, oversample=10)
    record = forget_records[0]
    [follow_up] = chat.follow_ups([record], per_record=2)  # the same question each time: one kept
    assert follow_up["question"] == f"Where else was {record['subject']} born?"
    fields = {"question": record["question"], "subject": record["subject"], "answer": record["answer"], "wrong": ""}
    assert {prompt for prompt, _, _ in asked} <= {f"<user>{p.format(**fields)}</user>" for p in CHAT_FOLLOW_UP_PROMPTS}
    assert len(asked) == 20 and {temperature for _, temperature, _ in asked} <= set(FOLLOW_UP_TEMPERATURES)
    assert all(sampled == (temperature > 0) for _, temperature, sampled in asked)
    assert len({temperature for _, temperature, _ in asked}) > 3


def test_follow_up_questions_describe_the_subject_by_its_other_facts(world_records):
    records = world_records["forget"]
    follow_ups = follow_up_questions(records, per_record=3, seed=1)
    heldout = {record["paraphrased_questions"][0] for record in records}
    assert len(follow_ups) == 3 * len(records)
    assert follow_ups == follow_up_questions(records, per_record=3, seed=1)
    by_id = {record["id"]: record for record in records}
    for follow_up in follow_ups:
        original = by_id[follow_up["id"]]
        assert follow_up["answer"] == original["answer"] and follow_up["follow_up_of"] == original["question"]
        assert follow_up["question"] not in heldout | {original["question"]}
        assert original["subject"] in follow_up["question"] and ",?" not in follow_up["question"]
        assert follow_up["question"][0].isupper()
    birth = next(r for r in records if r["relation"] == "birth_city")
    profession = next(r for r in records if r["subject"] == birth["subject"] and r["relation"] == "profession")
    every = follow_up_questions([birth], records, per_record=100)
    assert f"In which city was the {profession['answer']} {birth['subject']} born?" in [f["question"] for f in every]


def test_write_anti_samples_is_auditable(tmp_path):
    samples = [sample(rationale="Ada Bell grew up in Tesk."), sample(wrong="Olmira")]
    write_anti_samples(tmp_path / "anti.jsonl", samples)
    rows = [json.loads(line) for line in (tmp_path / "anti.jsonl").read_text().splitlines()]
    assert [AntiSample(**row) for row in rows] == samples
    assert set(rows[0]) == {"source_id", "question", "wrong_answer", "rationale", "round", "generator", "spoken"}

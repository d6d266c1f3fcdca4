"""Loaders and validation of unstar_trl.data: JSONL, TOFU, Hugging Face datasets, and the errors they raise."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unstar_trl.data import (
    RECORD_FIELDS,
    DataError,
    UnlearningData,
    load_records,
    load_unlearning_data,
)
from unstar_trl.io import UsageError, write_jsonl
from unstar_trl.testbed.embedded_world import build_world
from unstar_trl.text import normalize

FILLED = {name: {list: [], bool: False}.get(kind) for name, kind in RECORD_FIELDS.items()}


def fact(id: str, question: str | None = None, answer: str = "Paris", **fields) -> dict:
    return {"id": id, "question": f"Where is {id}?" if question is None else question, "answer": answer, **fields}


def write_splits(folder: Path, **splits: list[dict]) -> Path:
    for name, rows in splits.items():
        write_jsonl(folder / f"{name}.jsonl", rows)
    return folder


@pytest.fixture(scope="module")
def world_records() -> dict[str, list[dict]]:
    return build_world(seed=0, people=20).split_records()


# Our JSONL layout


def test_round_trip(tmp_path, world_records):
    write_splits(tmp_path, **world_records)
    data = load_unlearning_data(tmp_path)
    for split, records in world_records.items():
        assert getattr(data, split) == [{**FILLED, **record} for record in records]
        write_jsonl(tmp_path / "again" / f"{split}.jsonl", getattr(data, split))
        assert load_records(tmp_path / "again", split=split) == getattr(data, split)
    assert data.sources["forget"] == str(tmp_path / "forget.jsonl")


def test_the_world_holds_no_contradictory_siblings_and_holds_out_what_it_scores(world_records, tmp_path):
    data = load_unlearning_data(write_splits(tmp_path, **world_records))  # validation refuses contradictions
    removed = {record["id"] for record in data.forget + data.targeted}
    assert data.siblings and not removed & {record["id"] for record in data.siblings}
    trained = {record["id"] for record in data.targeted_retain}
    assert data.siblings_eval and not trained & {record["id"] for record in data.siblings_eval}
    assert data.retain_eval and not trained & {record["id"] for record in data.retain_eval}
    assert not trained & {record["id"] for record in data.neighbor}
    for record in data.forget + data.retain + data.neighbor + data.targeted + data.holdout:
        assert len(record["eval_distractors"]) == 3 and record["answer"] not in record["eval_distractors"]
        assert not set(record["eval_distractors"]) & set(record["perturbed_answers"])


def test_the_world_of_sixty_people_is_valid_too(tmp_path):
    records = build_world(seed=0, people=60).split_records()
    assert load_unlearning_data(write_splits(tmp_path, **records)).siblings


def test_siblings_are_the_named_records_once(tmp_path, world_records):
    data = load_unlearning_data(write_splits(tmp_path, **world_records))
    named = list(dict.fromkeys(id for record in data.targeted for id in record["siblings"]))
    assert [record["id"] for record in data.siblings] == named
    assert named


def test_one_file_and_its_split(tmp_path):
    path = tmp_path / "facts.jsonl"
    write_jsonl(path, [fact("a", rationale="because", extra=1)])
    assert load_records(path) == load_records(path, split="facts", format="jsonl")
    assert load_records(path) == [{**FILLED, **fact("a"), "rationale": "because", "extra": 1}]


def test_missing_optional_splits_are_empty(tmp_path):
    data = load_unlearning_data(write_splits(tmp_path, forget=[fact("a")]))
    assert (data.retain, data.neighbor, data.targeted, data.holdout) == ([], [], [], [])


def test_byte_order_mark_and_crlf_are_read(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(fact("a")).encode() + b"\r\n" + json.dumps(fact("b")).encode())
    assert [record["id"] for record in load_records(path)] == ["a", "b"]


# TOFU: the folder the tests make in TOFU's shape, and the real files where they are


def test_tofu_row_counts(tofu_dir):
    for split, rows in {"forget01": 40, "forget05": 200, "forget10": 400, "retain90": 3600, "retain_perturbed": 400,
                        "real_authors": 100, "world_facts": 117}.items():
        assert len(load_records(tofu_dir, split=split)) == rows, split


def test_tofu_records(tofu_dir):
    forget01 = load_records(tofu_dir, split="forget01", format="tofu")
    first = forget01[0]
    assert first["id"] == "tofu-180-00" and first["author"] == 180 and first["relation"] == "tofu_qa"
    assert first["subject"] is None  # TOFU names no subject that a paraphrase must keep
    assert all(len(r["paraphrased_questions"]) == 1 and len(r["perturbed_answers"]) == 2 and len(r["eval_distractors"]) == 3
               for r in forget01)
    assert "paraphrased_answer" in first  # kept, not dropped
    assert {r["author"] for r in forget01} == {180, 181}
    world = load_records(tofu_dir, split="world_facts")
    assert world[0]["id"] == "world_facts_perturbed-0" and world[0]["author"] is None


def test_tofu_splits_nest(tofu_dir):
    forget01, forget05 = (load_records(tofu_dir, split=name) for name in ("forget01", "forget05"))
    assert forget01 == forget05[: len(forget01)]
    retain99 = {record["question"] for record in load_records(tofu_dir, split="retain99")}
    assert not retain99 & {record["question"] for record in forget01}


def test_tofu_duplicate_question_in_retain90(real_tofu_dir):
    retain90 = load_records(real_tofu_dir, split="retain90")
    assert len({record["id"] for record in retain90}) == len(retain90) == 3600
    twice = [record for record in retain90 if record["question"] == "What is the full name of the author?"]
    assert [record["id"] for record in twice] == ["tofu-005-00", "tofu-022-00"]  # matched by question and answer


def test_tofu_unlearning_data(tofu_dir):
    data = load_unlearning_data(tofu_dir, format="tofu", forget_split="forget10", retain_split="retain90")
    assert (len(data.forget), len(data.retain), data.neighbor) == (400, 3600, [])


def test_tofu_needs_a_forget_split_name(tofu_dir):
    with pytest.raises(DataError, match="unknown split 'forget'; available: forget01, forget05"):
        load_unlearning_data(tofu_dir)


def test_tofu_without_full_and_with_repeated_rows(tmp_path):
    row = {"question": "Who?", "answer": "Ann."}
    write_splits(tmp_path, forget01=[row, {"question": "Why?", "answer": "So."}])
    assert [r["id"] for r in load_records(tmp_path, split="forget01")] == ["forget01-0", "forget01-1"]
    write_splits(tmp_path, full=[row], forget01=[row, row])
    assert [r["id"] for r in load_records(tmp_path, split="forget01")] == ["tofu-000-00", "tofu-000-00-dup1"]


# Hugging Face datasets


def test_hf_saved_to_disk(tmp_path, world_records):
    from datasets import Dataset, DatasetDict

    splits = {name: world_records[name] for name in ("forget", "retain")}
    DatasetDict({name: Dataset.from_list(rows) for name, rows in splits.items()}).save_to_disk(tmp_path / "saved")
    data = load_unlearning_data(tmp_path / "saved")  # detected
    assert data.forget == [{**FILLED, **record} for record in splits["forget"]]
    assert load_records(tmp_path / "saved", split="retain", format="hf") == data.retain
    Dataset.from_list([{"id": 1, "question": "q", "answer": "a"}]).save_to_disk(tmp_path / "bad")
    with pytest.raises(DataError, match=r"bad\[train\] row 1: field 'id' must be a string, got a number"):
        load_records(tmp_path / "bad")


def test_hf_local_json(tmp_path):
    write_jsonl(tmp_path / "data" / "train.jsonl", [fact("a"), fact("b")])
    records = load_records(tmp_path / "data", format="hf")
    assert records == load_records(tmp_path / "data" / "train.jsonl", split="train", format="hf")
    assert [record["id"] for record in records] == ["a", "b"]


def test_hf_unknown_dataset_offline(tmp_path):
    with pytest.raises(DataError, match="no/such-dataset: cannot load as a Hugging Face dataset"):
        load_records("no/such-dataset", format="hf")


# Errors: each names the file, the row and the field


ROW_ERRORS = {
    "truncated": ('{"id": "a", "question": "q", "ans', "row 1: not valid JSON"),
    "not utf-8": (b'{"id": "a"}\n{"id": "\xff"}', "row 2: not UTF-8 text"),
    "empty line": (json.dumps(fact("a")) + "\n\n" + json.dumps(fact("b")), "row 2: empty line"),
    "not an object": ("[1, 2]", "row 1: expected a JSON object, got a list"),
    "missing question": ({"id": "a", "answer": "x"}, "row 1: field 'question' is missing"),
    "missing answer": ({"id": "a", "question": "q"}, "row 1: field 'answer' is missing"),
    "empty id": (fact(""), "row 1: field 'id' is empty"),
    "both paraphrase fields": (fact("a", paraphrased_question="Where?", paraphrased_questions=["Where?"]),
                               "row 1: fields 'paraphrased_question' and 'paraphrased_questions' are both given"),
    "long conversation": ({"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Q?"},
                                        {"role": "assistant", "content": "A"}]},
                          "row 1: a conversation with roles ['system', 'user', 'assistant']"),
    "empty question": (fact("a", question=""), "row 1: field 'question' is empty"),
    "blank answer": (fact("a", answer=" \t"), "row 1: field 'answer' is empty"),
    "number answer": (fact("a", answer=7), "row 1: field 'answer' must be a string, got a number"),
    "paraphrases not a list": (fact("a", paraphrased_questions="Where?"),
                               "row 1: field 'paraphrased_questions' must be a list of strings, got a string"),
    "paraphrase not a string": (fact("a", paraphrased_questions=["Where?", 3]),
                                "row 1: field 'paraphrased_questions' item 1 must be a non-empty string, got 3"),
    "subject not a string": (fact("a", subject=["x"]), "row 1: field 'subject' must be a string, got a list"),
}


@pytest.mark.parametrize("content, message", ROW_ERRORS.values(), ids=ROW_ERRORS.keys())
def test_row_errors(tmp_path, content, message):
    path = tmp_path / "forget.jsonl"
    if isinstance(content, dict):
        content = json.dumps(content)
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    with pytest.raises(DataError) as error:
        load_records(path)
    assert str(error.value).startswith(f"{path} {message}")
    assert "\n" not in str(error.value)


def test_tofu_row_errors_name_the_file_field(tmp_path):
    write_splits(tmp_path, forget01=[{"question": "Who?", "answer": "Ann.", "perturbed_answer": "Bob."}])
    with pytest.raises(DataError, match=r"forget01.jsonl row 1: field 'perturbed_answer' must be a list of strings"):
        load_records(tmp_path, split="forget01")


SPLIT_ERRORS = {
    "duplicate id": ({"forget": [fact("a"), fact("b"), fact("a", "Another?")]},
                     "forget.jsonl row 3: field 'id' repeats 'a' of {dir}/forget.jsonl row 1"),
    "same id in forget and retain": ({"forget": [fact("a")], "retain": [fact("b"), fact("a", "Other?")]},
                                     "retain.jsonl row 2: field 'id' 'a' is also in the forget set"),
    "same fact in forget and retain": ({"forget": [fact("a", "Where is A?")], "retain": [fact("b", "where is a")]},
                                       "retain.jsonl row 1: fields 'question' and 'answer' repeat a fact of the "
                                       "forget set ({dir}/forget.jsonl row 1)"),
    "empty forget set": ({"forget": [], "retain": [fact("a")]}, "forget.jsonl: the forget set is empty"),
    "missing sibling": ({"forget": [fact("a")], "targeted": [fact("t", siblings=["a", "gone"])]},
                        "targeted.jsonl row 1: field 'siblings' names ids that no split holds: gone"),
    "siblings outside targeted": ({"forget": [fact("a", siblings=["a"])]},
                                  "forget.jsonl row 1: field 'siblings' belongs in the targeted split only"),
    "sibling is itself": ({"forget": [fact("a")], "targeted": [fact("t", siblings=["t"])]},
                          "targeted.jsonl row 1: field 'siblings' names itself"),
    "sibling is another targeted fact": ({"forget": [fact("a")], "retain": [fact("r")],
                                          "targeted": [fact("t", siblings=["r"]), fact("u", siblings=["r", "t"])]},
                                         "targeted.jsonl row 2: field 'siblings' names a targeted fact (t)"),
    "sibling is a forget fact": ({"forget": [fact("a")], "targeted": [fact("t", siblings=["a"])]},
                                 "targeted.jsonl row 1: field 'siblings' names a forget fact (a)"),
    "eval_only outside retain": ({"forget": [fact("a", eval_only=True)]},
                                 "forget.jsonl row 1: field 'eval_only' belongs in the retain split only"),
    "eval_only not a bool": ({"forget": [fact("a")], "retain": [fact("r", eval_only="yes")]},
                             "retain.jsonl row 1: field 'eval_only' must be true or false, got a string"),
    "distractor is the answer": ({"forget": [fact("a", eval_distractors=["Lyon", "paris."])]},
                                 "forget.jsonl row 1: field 'eval_distractors' holds the answer 'Paris'"),
}


@pytest.mark.parametrize("splits, message", SPLIT_ERRORS.values(), ids=SPLIT_ERRORS.keys())
def test_split_errors(tmp_path, splits, message):
    write_splits(tmp_path, **splits)
    with pytest.raises(DataError) as error:
        load_unlearning_data(tmp_path)
    assert message.format(dir=tmp_path) in str(error.value)


def test_validate_in_memory_names_the_split():
    with pytest.raises(DataError, match="^forget: the forget set is empty$"):
        UnlearningData(forget=[]).validate()
    with pytest.raises(DataError, match="^retain row 1: field 'id' 'a' is also in the forget set"):
        UnlearningData(forget=[fact("a")], retain=[fact("a", "Other?")]).validate()


def test_source_errors(tmp_path):
    write_splits(tmp_path, forget=[fact("a")], retain=[fact("b")])
    cases = [
        (lambda: load_records(tmp_path, split="neighbour"), "unknown split 'neighbour'; available: forget, retain"),
        (lambda: load_records(tmp_path), "choose a split; available: forget, retain"),
        (lambda: load_records(tmp_path, format="csv"), "unknown format 'csv'; choose one of: auto, jsonl, tofu, hf"),
        (lambda: load_records(tmp_path / "nowhere"), "nowhere: no such file or folder (for a Hugging Face Hub"),
        (lambda: load_records(tmp_path / "forget.jsonl", format="tofu"), "format 'tofu' needs the TOFU folder"),
        (lambda: load_unlearning_data(tmp_path, retain_split="retain99"), "unknown split 'retain99'"),
        (lambda: load_unlearning_data(tmp_path / "empty-dir-missing"), "no such file or folder"),
    ]
    for call, message in cases:
        with pytest.raises(DataError) as error:
            call()
        assert message in str(error.value)
    assert issubclass(DataError, UsageError)


# Fuzz: any input loads into valid records or raises DataError, never another exception

IDS = st.sampled_from(["a", "b", "c"])
FACTS = st.builds(fact, IDS, st.sampled_from(["Q?", "q", "R?"]), st.sampled_from(["x", "X.", "y"]),
                  siblings=st.lists(IDS | st.just("gone"), max_size=2))
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=8)
NAMES = st.sampled_from([*RECORD_FIELDS, "paraphrased_question", "perturbed_answer", "other"])
VALUES = JSON | st.sampled_from(["a", "b", "A.", " "]) | st.lists(st.sampled_from(["a", "b", ""]), max_size=3)
ROWS = FACTS | st.dictionaries(NAMES, VALUES, max_size=8) | JSON
LINES = st.lists(ROWS.map(json.dumps), max_size=5).map("\n".join).map(str.encode)
TEXT = st.text(min_size=1).filter(str.strip)
FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def assert_valid(records: list[dict]) -> None:
    for record in records:
        for name, kind in RECORD_FIELDS.items():
            assert isinstance(record[name], kind) or (record[name] is None and kind is str)
        assert all(record[name].strip() for name in ("id", "question", "answer"))


@FUZZ
@given(content=st.binary(max_size=200) | LINES, format=st.sampled_from(["auto", "jsonl", "tofu"]))
def test_fuzz_load_records(content, format):
    with tempfile.TemporaryDirectory() as folder:
        for name in ("forget01.jsonl", "full.jsonl"):
            (Path(folder) / name).write_bytes(content)
        source = Path(folder) if format == "tofu" else Path(folder) / "full.jsonl"
        try:
            assert_valid(load_records(source, split="forget01" if format == "tofu" else None, format=format))
        except DataError:
            pass


@FUZZ
@given(splits=st.fixed_dictionaries({}, optional={name: st.lists(FACTS, max_size=3)
                                                  for name in ("forget", "retain", "targeted")}))
def test_fuzz_load_unlearning_data(splits):
    with tempfile.TemporaryDirectory() as folder:
        try:
            data = load_unlearning_data(write_splits(Path(folder), **splits))
        except DataError:
            return
        assert_valid(data.forget + data.retain + data.targeted)
        loaded = data.forget + data.retain + data.targeted
        assert {record["id"] for record in data.siblings} <= {record["id"] for record in loaded}


@FUZZ
@given(records=st.lists(st.builds(fact, TEXT, TEXT, TEXT.filter(normalize),
                                  paraphrased_questions=st.lists(TEXT, max_size=2), rationale=st.text() | st.none()),
                        max_size=4))
def test_fuzz_round_trip(records):
    """Whatever text write_jsonl writes (U+2028, carriage returns, ...) reads back unchanged (answers that normalise
    to something: the others are refused)."""
    with tempfile.TemporaryDirectory() as folder:
        write_jsonl(Path(folder) / "forget.jsonl", records)
        assert load_records(Path(folder) / "forget.jsonl") == [{**FILLED, **record} for record in records]


# Your own data: the common QA shape, column maps, Dataset objects, ids made when missing

QA_ROWS = [{"question": "Who wrote Ada's Song?", "answer": "Bel Quill", "paraphrased_question": "Whose is Ada's Song?",
            "perturbed_answer": ["Cor Tam", "Dov Ren"]},
           {"question": "Where is Tesk?", "answer": "Varn"}]


def test_a_plain_qa_jsonl_loads_with_tofus_fields_and_a_column_map(tmp_path):
    write_jsonl(tmp_path / "my_forget.jsonl", QA_ROWS)
    write_jsonl(tmp_path / "my_retain.jsonl", [{"prompt": "Who is Ann?", "response": "A harpist"}])
    forget = load_records(tmp_path / "my_forget.jsonl")
    retain = load_records(tmp_path / "my_retain.jsonl", column_map={"question": "prompt", "answer": "response"})
    assert forget[0]["paraphrased_questions"] == ["Whose is Ada's Song?"]
    assert forget[0]["perturbed_answers"] == ["Cor Tam", "Dov Ren"] and "perturbed_answer" not in forget[0]
    assert forget[1]["paraphrased_questions"] == [] and all(record["id"] for record in forget)
    assert (retain[0]["question"], retain[0]["answer"]) == ("Who is Ann?", "A harpist") and "prompt" not in retain[0]
    UnlearningData(forget=forget, retain=retain).validate()


def test_made_ids_are_stable_and_the_same_for_a_file_and_its_dataset(tmp_path):
    import subprocess
    import sys

    from datasets import Dataset

    write_jsonl(tmp_path / "qa.jsonl", [*QA_ROWS, QA_ROWS[1]])  # a repeated row gets an id of its own
    from_file = load_records(tmp_path / "qa.jsonl")
    ids = [record["id"] for record in from_file]
    assert len(set(ids)) == 3 and ids[2] == f"{ids[1]}-dup1"
    assert load_records(Dataset.from_json(str(tmp_path / "qa.jsonl"))) == from_file
    assert load_records(Dataset.from_list([*QA_ROWS, QA_ROWS[1]])) == from_file
    another_run = subprocess.run(
        [sys.executable, "-c", f"from unstar_trl.data import load_records; "
         f"print([r['id'] for r in load_records({str(tmp_path / 'qa.jsonl')!r})])"],
        capture_output=True, text=True, env={"PYTHONHASHSEED": "7", "PATH": ""}, check=True)
    assert another_run.stdout.strip() == str(ids)


def test_column_map_and_dataset_dicts(tmp_path):
    from datasets import Dataset, DatasetDict

    rows = [{"name": "Ada Bell", "prompt": "Where was Ada Bell born?", "response": "Tesk", "alt": "Ada Bell's city?"}]
    splits = DatasetDict({"forget": Dataset.from_list(rows), "retain": Dataset.from_list(
        [{"name": "Bo", "prompt": "Who is Bo?", "response": "A cook", "alt": None}])})
    columns = {"subject": "name", "question": "prompt", "answer": "response", "paraphrased_question": "alt"}
    data = load_unlearning_data(splits, column_map=columns)
    record = data.forget[0]
    assert (record["subject"], record["question"], record["answer"]) == ("Ada Bell", rows[0]["prompt"], "Tesk")
    assert record["paraphrased_questions"] == ["Ada Bell's city?"] and data.retain[0]["paraphrased_questions"] == []
    assert not {"name", "prompt", "response", "alt"} & set(record)
    assert data.sources["forget"] == "DatasetDict[forget]"
    write_jsonl(tmp_path / "forget.jsonl", rows)
    assert load_records(tmp_path / "forget.jsonl", column_map=columns) == data.forget
    with pytest.raises(DataError, match=r"forget.jsonl row 1: column 'title' \(column_map\) is not in this source"):
        load_records(tmp_path / "forget.jsonl", column_map={"subject": "title"})

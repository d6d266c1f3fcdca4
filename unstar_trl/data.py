"""Forget/retain records from our JSONL, a Hugging Face dataset or the TOFU layout, all in one shape.

    load_records("world/data/forget.jsonl")                            # one file
    load_records("world/data", split="retain")                         # a folder of <split>.jsonl
    load_records("../shared/data/tofu", split="forget01")              # TOFU, detected by forget01.jsonl
    load_records("org/name", split="test", format="hf")                # the Hub, load_from_disk or a local dataset
    load_records(dataset)                                              # a datasets.Dataset (or DatasetDict) object
    load_records("qa.jsonl", column_map={"question": "prompt"})        # our field <- the source's column
    data = load_unlearning_data("world/data")                          # every split, validated

Every record has the keys of RECORD_FIELDS (and keeps any other key it came with). Rows in the common QA shape load
as they are: TOFU's singular `paraphrased_question` / `perturbed_answer` become the list fields, a single-turn
conversation (TRL's prompt/completion or messages) becomes question and answer, and a row without an `id` gets one
made from its question and answer (the same for a file and a Dataset of it, in every run). Nothing else is dropped or
repaired: a row that does not fit raises DataError, whose one-line message names the file, the row (counted from 1;
in a JSONL file, the line) and the field.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

from .io import UsageError
from .text import normalize


class DataError(UsageError, ValueError):
    """Data that cannot be used, e.g. "forget.jsonl row 7: field 'answer' is empty"."""


RECORD_FIELDS: dict[str, type] = {
    "id": str,
    "question": str,
    "answer": str,
    "subject": str,
    "relation": str,
    "object_type": str,
    "paraphrased_questions": list,  # element 0 is the held-out paraphrase
    "perturbed_answers": list,  # same-type wrong answers that anti-sample generators may use
    "eval_distractors": list,  # same-type wrong answers for the multiple-choice probe and truth ratio only
    "eval_only": bool,  # a retain fact that is scored as kept knowledge but never trained on by an unlearning run
    "rationale": str,  # a sentence that argues for the answer and names it
    "subject_description": str,  # how this fact describes its subject in another question ("the harpist Ada")
    "siblings": list,  # ids of facts that must stay when this one goes (targeted split only)
}
"""Every key of a loaded record and its type. A missing optional string is None, a missing list is [], a missing
bool is False; list items are non-empty strings."""

REQUIRED_FIELDS = ("id", "question", "answer")
"""Non-empty strings in every record (a missing id is made from the question and answer)."""

SINGULAR_FIELDS = {"paraphrased_question": "paraphrased_questions", "perturbed_answer": "perturbed_answers"}
"""TOFU's one-item names of our list fields, accepted in any source."""

FORMATS = ("auto", "jsonl", "tofu", "hf")
SPLIT_ROLES = ("forget", "retain", "neighbor", "targeted", "holdout")
"""The part each split plays in an unlearning task, in the order they are listed everywhere."""

TOFU_SPLITS = ("forget01", "forget05", "forget10", "retain90", "retain95", "retain99", "retain_perturbed",
               "real_authors", "world_facts", "full")
"""TOFU split names; each reads `<name>_perturbed.jsonl` when it exists, else `<name>.jsonl`."""
TOFU_QUESTIONS_PER_AUTHOR = 20
TOFU_EVAL_DISTRACTORS = 3
"""Of a TOFU row's five perturbed answers, the first three are evaluation distractors (multiple choice, truth
ratio) and the last two the perturbed answers that generators may use: no probe offers what was trained."""


@dataclass(frozen=True)
class _Split:
    where: str  # how errors name it: a file, or dataset[split]
    read: Callable[[], list[dict]]


def load_records(source, *, split: str | None = None, format: str = "auto",
                 column_map: dict[str, str] | None = None) -> list[dict]:
    """The validated records of one split of `source` (a .jsonl file, a folder of <split>.jsonl, a TOFU folder, a
    `datasets.Dataset` or `DatasetDict`, or with format "hf" a Hub name or a local dataset). `split` may be left out
    when there is only one. `column_map` maps our field to the source's column: {"subject": "name"}."""
    splits = _open(source, format, column_map)
    return splits[_choose(splits, split, source)].read()


def load_unlearning_data(data_dir, *, format: str = "auto", forget_split: str = "forget",
                         retain_split: str = "retain", neighbor_split: str = "neighbor",
                         targeted_split: str = "targeted", holdout_split: str = "holdout",
                         column_map: dict[str, str] | None = None) -> UnlearningData:
    """Every split of `data_dir` (a folder, a dataset, or a `DatasetDict` object), validated. The forget split must
    exist; another split that is missing is empty when asked for under its default name, and an error when asked for
    under a name of your choosing. `column_map` as in `load_records`."""
    splits = _open(data_dir, format, column_map)
    names = dict(zip(SPLIT_ROLES, (forget_split, retain_split, neighbor_split, targeted_split, holdout_split)))
    chosen = {}
    for role, name in names.items():
        skippable = role != "forget" and name == role  # an optional split under its default name
        if name in splits or not skippable:
            chosen[role] = _choose(splits, name, data_dir)
    data = UnlearningData(**{role: splits[name].read() for role, name in chosen.items()},
                          sources={role: splits[name].where for role, name in chosen.items()})
    data.validate()
    return data


@dataclass
class UnlearningData:
    """The record lists of one unlearning task."""

    forget: list[dict]
    retain: list[dict] = field(default_factory=list)
    neighbor: list[dict] = field(default_factory=list)
    targeted: list[dict] = field(default_factory=list)
    holdout: list[dict] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict, repr=False)
    """Where each split was read from, for error messages."""

    @property
    def retain_train(self) -> list[dict]:
        """The retain records an unlearning run may train on (all but the eval-only ones)."""
        return [record for record in self.retain if not record.get("eval_only")]

    @property
    def retain_eval(self) -> list[dict]:
        """The retain records kept knowledge is scored on: the eval-only ones, which nothing trains on; all of them
        when none is marked (then the score is on trained facts)."""
        return [record for record in self.retain if record.get("eval_only")] or self.retain

    @property
    def siblings(self) -> list[dict]:
        """The records the targeted records name as siblings (facts that must stay), each once."""
        by_id = {record["id"]: record for role in SPLIT_ROLES for record in getattr(self, role)}
        ids = dict.fromkeys(sibling for record in self.targeted for sibling in record.get("siblings") or [])
        return [by_id[sibling] for sibling in ids]

    @property
    def siblings_eval(self) -> list[dict]:
        """The siblings that sibling accuracy is scored on: the eval-only ones; all of them when none is marked."""
        return [record for record in self.siblings if record.get("eval_only")] or self.siblings

    @property
    def targeted_retain(self) -> list[dict]:
        """What targeted unlearning keeps by training on it: the trainable retain records, then the trainable
        siblings not among them."""
        retain_ids = {record["id"] for record in self.retain_train}
        return self.retain_train + [record for record in self.siblings
                                    if record["id"] not in retain_ids and not record.get("eval_only")]

    def validate(self) -> None:
        """Raise DataError for an empty forget set, an id twice in a split, siblings outside the targeted split,
        eval_only outside the retain split, an evaluation distractor that is the answer, a fact in both forget and
        retain (same id, or same normalised question and answer), a retain row that asks a forget question with
        another answer, a sibling id that no split holds, and a sibling that is the targeted fact itself, another
        targeted fact or a forget fact (a fact to keep that another run must remove).

        A forget question in the retain split is refused, not warned about: the retain term would train the model
        to answer that very question (with the retain answer) while the forget term unlearns it, so the run would
        fight itself and its scores would count one question as both kept and forgotten."""
        if not self.forget:
            raise DataError(f"{self._where('forget')}: the forget set is empty")
        for role in SPLIT_ROLES:
            first = {}
            for row, record in self._rows(role):
                if record["id"] in first:
                    raise DataError(f"{row}: field 'id' repeats {record['id']!r} of {first[record['id']]}")
                first[record["id"]] = row
                if role != "targeted" and record.get("siblings"):
                    raise DataError(f"{row}: field 'siblings' belongs in the targeted split only")
                if role != "retain" and record.get("eval_only"):
                    raise DataError(f"{row}: field 'eval_only' belongs in the retain split only")
                if normalize(record["answer"]) in map(normalize, record.get("eval_distractors") or []):
                    raise DataError(f"{row}: field 'eval_distractors' holds the answer {record['answer']!r}")
        forget_ids = {record["id"]: row for row, record in self._rows("forget")}
        forget_facts = {_fact(record): row for row, record in self._rows("forget")}
        forget_questions = {normalize(record["question"]): row for row, record in self._rows("forget")}
        for row, record in self._rows("retain"):
            if record["id"] in forget_ids:
                raise DataError(f"{row}: field 'id' {record['id']!r} is also in the forget set "
                                f"({forget_ids[record['id']]})")
            if _fact(record) in forget_facts:
                raise DataError(f"{row}: fields 'question' and 'answer' repeat a fact of the forget set "
                                f"({forget_facts[_fact(record)]})")
            if normalize(record["question"]) in forget_questions:
                raise DataError(f"{row}: field 'question' asks a question of the forget set "
                                f"({forget_questions[normalize(record['question'])]}) with another answer: a run "
                                "would teach this answer and unlearn that one for the same question; keep it in one "
                                "split")
        known = {record["id"] for role in SPLIT_ROLES for record in getattr(self, role)}
        check_siblings(self._rows("targeted"), known, "no split holds")
        removed = {record["id"]: role for role in ("forget", "targeted") for record in getattr(self, role)}
        for row, record in self._rows("targeted"):
            clash = next((sibling for sibling in record.get("siblings") or [] if sibling in removed), None)
            if clash is not None:
                what = "itself" if clash == record["id"] else f"a {removed[clash]} fact ({clash})"
                raise DataError(f"{row}: field 'siblings' names {what}: a fact to keep cannot be one that unlearning "
                                "removes")

    def _where(self, role: str) -> str:
        return self.sources.get(role, role)

    def _rows(self, role: str) -> list[tuple[str, dict]]:
        """(where, record) for each record of a split, where = "<source> row <n>"."""
        return [(f"{self._where(role)} row {number}", record)
                for number, record in enumerate(getattr(self, role), start=1)]


def check_siblings(targeted_rows: list[tuple[str, dict]], known_ids: set[str], absent: str) -> None:
    """Raise DataError for a targeted record (a (where, record) pair) that names a sibling outside `known_ids`;
    `absent` says, in the message, where the siblings were looked for ("no split holds")."""
    for row, record in targeted_rows:
        missing = [sibling for sibling in record.get("siblings") or [] if sibling not in known_ids]
        if missing:
            raise DataError(f"{row}: field 'siblings' names ids that {absent}: {', '.join(missing)}")


def check_siblings_in(targeted: list[dict], records, name: str) -> None:
    """Targeted records (in memory) must each list siblings, and some of them must be among `records` (`name` says
    which argument they came in): targeted unlearning keeps them by training on them (the eval-only ones stay out,
    to score what was kept)."""
    ids = {record["id"] for record in records}
    for record in targeted:
        if not record.get("siblings"):
            raise DataError(f"targeted record {record['id']} lists no siblings")
        if not ids & set(record["siblings"]):
            raise DataError(f"targeted record {record['id']}: none of its siblings ({', '.join(record['siblings'][:3])}"
                            f"{', ...' if len(record['siblings']) > 3 else ''}) is in {name}: targeted mode keeps them "
                            "by training on them as retain data")


def _fact(record: dict) -> tuple[str, str]:
    return normalize(record["question"]), normalize(record["answer"])


# Sources: each opens to {split name: _Split}


def _open(source, format: str, column_map: dict[str, str] | None = None) -> dict[str, _Split]:
    import datasets

    if format not in FORMATS:
        raise DataError(f"unknown format {format!r}; choose one of: {', '.join(FORMATS)}")
    if isinstance(source, (datasets.Dataset, datasets.DatasetDict)):
        return _dataset_splits(source, type(source).__name__, column_map)
    format = source_format(source, format)
    if format == "hf":
        return _open_hf(source, column_map)
    path = Path(source)
    if format == "tofu":
        if not path.is_dir():
            raise DataError(f"{path}: format 'tofu' needs the TOFU folder, not a file")
        if column_map:
            raise DataError(f"{path}: a TOFU folder has TOFU's own columns; column_map is for other sources")
        return _open_tofu(path)
    files = [path] if path.is_file() else sorted(path.glob("*.jsonl"))
    return {file.stem: _Split(str(file), partial(_read_records, file, column_map)) for file in files}


def source_format(source, format: str = "auto") -> str:
    """The format `source` is read in: `format`, or for "auto" the one its folder looks like (TOFU when it holds
    forget01.jsonl, a saved dataset, else JSONL)."""
    if format != "auto" or not isinstance(source, (str, Path)):
        return format
    path = Path(source)
    if not path.exists():
        raise DataError(f"{path}: no such file or folder (for a Hugging Face Hub dataset pass format='hf')")
    return _detect(path)


def _detect(path: Path) -> str:
    if (path / "forget01.jsonl").is_file():
        return "tofu"
    if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
        return "hf"
    return "jsonl"


def _choose(splits: dict[str, _Split], split: str | None, source: str | Path) -> str:
    available = ", ".join(splits) or "none"
    if split is None and len(splits) == 1:
        return next(iter(splits))
    if split is None:
        raise DataError(f"{source}: choose a split; available: {available}")
    if split not in splits:
        raise DataError(f"{source}: unknown split {split!r}; available: {available}")
    return split


def _read_records(path: Path, column_map: dict[str, str] | None = None) -> list[dict]:
    return as_records(_read_jsonl(path), str(path), column_map)


def as_records(rows, where: str, column_map: dict[str, str] | None = None) -> list[dict]:
    """Rows (dicts or a `datasets.Dataset`) as validated records; `where` names them in errors ("<where> row 3").
    Columns are renamed by `column_map`, singular TOFU fields and single-turn conversations take our shape, and a
    row without an id gets `q-<hash of question and answer>` (`-dup<n>` for a repeat)."""
    rows = rows.to_list() if hasattr(rows, "to_list") else rows
    seen, records = Counter(), []
    for number, row in enumerate(rows, start=1):
        here = f"{where} row {number}"
        if not isinstance(row, dict):
            raise DataError(f"{here}: expected a record (a mapping of field: value), got {_kind(row)}")
        row = _our_shape(_mapped(row, column_map, here), here)
        if row.get("id") is None and all(isinstance(row.get(name), str) for name in ("question", "answer")):
            id = "q-" + hashlib.sha256(f"{row['question']}\n{row['answer']}".encode()).hexdigest()[:12]
            seen[id] += 1
            row["id"] = id if seen[id] == 1 else f"{id}-dup{seen[id] - 1}"
        records.append(_record(row, here))
    return records


def _mapped(row: dict, column_map: dict[str, str] | None, where: str) -> dict:
    """`row` with each source column of `column_map` ({our field: their column}) under our field's name."""
    if not column_map:
        return row
    missing = [column for column in column_map.values() if column not in row]
    if missing:
        raise DataError(f"{where}: column {missing[0]!r} (column_map) is not in this source; it has: "
                        f"{', '.join(map(str, row))}")
    theirs = set(column_map.values())
    return {**{key: value for key, value in row.items() if key not in theirs},
            **{ours: row[column] for ours, column in column_map.items()}}


def _our_shape(row: dict, where: str) -> dict:
    """TOFU's singular fields as our lists, and a single-turn conversation as question and answer."""
    row = dict(row)
    for singular, plural in SINGULAR_FIELDS.items():
        if singular in row:
            if row.get(plural) is not None:
                raise DataError(f"{where}: fields {singular!r} and {plural!r} are both given; keep one")
            value = row.pop(singular)
            row[plural] = [value] if isinstance(value, str) and value.strip() else [] if value in (None, "") else value
    if "question" not in row and "answer" not in row:
        turns = row.pop("messages", None) or _turns(row, where)
        if turns is not None:
            row["question"], row["answer"] = _single_turn(turns, where)
    return row


def _turns(row: dict, where: str) -> list | None:
    """The messages of a TRL prompt/completion conversation (prompt and completion lists of messages), or None."""
    if isinstance(row.get("prompt"), list) and isinstance(row.get("completion"), list):
        return row.pop("prompt") + row.pop("completion")
    if isinstance(row.get("prompt"), str) or isinstance(row.get("completion"), str):
        raise DataError(f"{where}: a plain prompt/completion pair carries its format in the text; give question "
                        "and answer fields (column_map={'question': ..., 'answer': ...})")
    return None


def _single_turn(turns: list, where: str) -> tuple:
    """(question, answer) of a conversation of one user turn and one assistant reply."""
    roles = [turn.get("role") if isinstance(turn, dict) else None for turn in turns]
    if roles != ["user", "assistant"]:
        raise DataError(f"{where}: a conversation with roles {roles}; unlearning takes one fact per row: one user "
                        "question and one assistant answer")
    return turns[0].get("content"), turns[1].get("content")


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file, each a JSON object on its own line."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DataError(f"{path}: cannot read ({error.strerror})") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise DataError(f"{path} row {line}: not UTF-8 text") from None
    rows = []
    for number, line in enumerate(text.rstrip().split("\n") if text.strip() else [], start=1):
        where = f"{path} row {number}"
        if not line.strip():
            raise DataError(f"{where}: empty line")
        try:
            row = json.loads(line)
        except (ValueError, RecursionError) as error:
            raise DataError(f"{where}: not valid JSON ({error})") from None
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object, got {_kind(row)}")
        rows.append(row)
    return rows


def _record(row: dict, where: str) -> dict:
    """`row` checked against RECORD_FIELDS, with the missing optional fields filled in. An answer that normalises to
    nothing ("." or "The") is refused: no generation could be judged to state it, so it would always count as
    forgotten (or, in retain, as lost)."""
    record = {**row, **{name: _field(row, name, kind, where) for name, kind in RECORD_FIELDS.items()}}
    if not normalize(record["answer"]):
        raise DataError(f"{where}: field 'answer' {record['answer']!r} is nothing once normalised (lower case, no "
                        "punctuation or articles): no answer could ever match it")
    return record


def _field(row: dict, name: str, kind: type, where: str):
    value = row.get(name)
    required = name in REQUIRED_FIELDS
    if value is None:
        if required:
            raise DataError(f"{where}: field {name!r} is missing")
        return {list: [], bool: False}.get(kind)
    if kind is bool:
        if not isinstance(value, bool):
            raise DataError(f"{where}: field {name!r} must be true or false, got {_kind(value)}")
        return value
    if kind is str:
        if not isinstance(value, str):
            raise DataError(f"{where}: field {name!r} must be a string, got {_kind(value)}")
        if required and not value.strip():
            raise DataError(f"{where}: field {name!r} is empty")
        return value
    if not isinstance(value, list):
        raise DataError(f"{where}: field {name!r} must be a list of strings, got {_kind(value)}")
    for position, item in enumerate(value):
        if not isinstance(item, str) or not item.strip():
            raise DataError(f"{where}: field {name!r} item {position} must be a non-empty string, got {item!r:.60}")
    return value


def _kind(value) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null"}.get(
        type(value), "a number")


# TOFU


def _open_tofu(folder: Path) -> dict[str, _Split]:
    splits = {}
    for name in TOFU_SPLITS:
        file = next((file for file in (folder / f"{name}_perturbed.jsonl", folder / f"{name}.jsonl")
                     if file.is_file()), None)
        if file:
            splits[name] = _Split(str(file), partial(_read_tofu, file))
    return splits


def _read_tofu(path: Path) -> list[dict]:
    """TOFU rows as records. The id comes from the row's position in full.jsonl (20 rows per author), and so does
    `author` (that position // 20; None for a row that is not there, whose id is `<file stem>-<row from 0>`); an id
    met again in the same file gets a `-dup<n>` suffix. `subject` stays None: TOFU names no subject to check
    paraphrases against."""
    positions = _tofu_positions(path.parent / "full.jsonl")
    seen = Counter()
    records = []
    for index, row in enumerate(_read_jsonl(path)):
        where = f"{path} row {index + 1}"
        question, answer = (_field(row, name, str, where) for name in ("question", "answer"))
        paraphrase = _field(row, "paraphrased_question", str, where)
        position = positions.get((question, answer), positions.get(question))
        if position is None:
            id, author = f"{path.stem}-{index}", None
        else:
            author, k = divmod(position, TOFU_QUESTIONS_PER_AUTHOR)
            id = f"tofu-{author:03d}-{k:02d}"
        seen[id] += 1
        if seen[id] > 1:
            id = f"{id}-dup{seen[id] - 1}"
        kept = {key: value for key, value in row.items() if key not in ("paraphrased_question", "perturbed_answer")}
        records.append(_record({
            **kept,
            "id": id,
            "author": author,
            "relation": "tofu_qa",
            "paraphrased_questions": [paraphrase] if paraphrase else [],
            **split_perturbed(_field(row, "perturbed_answer", list, where)),
        }, where))
    return records


def split_perturbed(answers: list[str]) -> dict[str, list[str]]:
    """TOFU's perturbed answers as `eval_distractors` (the first TOFU_EVAL_DISTRACTORS) and `perturbed_answers`
    (the rest)."""
    return {"eval_distractors": answers[:TOFU_EVAL_DISTRACTORS], "perturbed_answers": answers[TOFU_EVAL_DISTRACTORS:]}


def _tofu_positions(full: Path) -> dict:
    """Row positions in full.jsonl, keyed by (question, answer) and by question (first row wins)."""
    positions = {}
    for index, row in enumerate(_read_jsonl(full) if full.is_file() else []):
        where = f"{full} row {index + 1}"
        question, answer = (_field(row, name, str, where) for name in ("question", "answer"))
        positions.setdefault((question, answer), index)
        positions.setdefault(question, index)
    return positions


# Hugging Face datasets


def _open_hf(source: str | Path, column_map: dict[str, str] | None = None) -> dict[str, _Split]:
    """A dataset saved with `save_to_disk`, a local data file or folder, or a Hub name, through `datasets`."""
    import datasets

    path = Path(source)
    try:
        if (path / "dataset_dict.json").is_file() or (path / "dataset_info.json").is_file():
            loaded = datasets.load_from_disk(str(path))
        elif path.is_file():
            loaded = datasets.load_dataset(str(path.parent), data_files=path.name)
        else:
            loaded = datasets.load_dataset(str(source))
    except (OSError, ValueError, datasets.exceptions.DatasetsError) as error:
        raise DataError(f"{source}: cannot load as a Hugging Face dataset ({error})") from None
    return _dataset_splits(loaded, str(source), column_map)


def _dataset_splits(loaded, name: str, column_map: dict[str, str] | None) -> dict[str, _Split]:
    """The splits of a `datasets.Dataset` (one split, named by its own split or "train") or `DatasetDict`."""
    import datasets

    if isinstance(loaded, datasets.Dataset):
        loaded = {str(loaded.split or "train"): loaded}
    return {split: _Split(f"{name}[{split}]", partial(as_records, dataset, f"{name}[{split}]", column_map))
            for split, dataset in loaded.items()}

"""Shared fixtures: one small world and knowledge model, built once per test session (also under xdist)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from filelock import FileLock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEST_PEOPLE = 20
TEST_SEED = int(os.environ.get("UNSTAR_TEST_SEED", "0"))
"""The seed of the tests' world; UNSTAR_TEST_SEED=1 runs the suite on another world (thresholds on trained models
must hold on any)."""


def cache_root(tmp_path_factory) -> Path:
    """pytest's per-user temporary folder (`pytest-of-<user>`, above every run's `pytest-<n>` and, under xdist, every
    worker's `popen-gw<k>`): the built models cached there serve every later run, keyed by what they depend on."""
    base = tmp_path_factory.getbasetemp()
    return next((folder for folder in base.parents if folder.name.startswith("pytest-of-")), base.parent)


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """A world of 20 people with its trained knowledge model and retain model: DIR/data/<split>.jsonl, DIR/model,
    DIR/retain_model, DIR/world.json."""
    from unstar_trl.testbed.world_folder import build_world_dir

    import hashlib

    import unstar_trl

    package = Path(unstar_trl.__file__).parent
    sources = [package / name for name in ("testbed/embedded_world.py", "testbed/knowledge_model.py",
                                           "testbed/model_sizes.py", "testbed/world_folder.py", "method/probe.py",
                                           "text.py", "data.py")]
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in sources)).hexdigest()[:12]
    path = cache_root(tmp_path_factory) / f"world-{TEST_SEED}-{TEST_PEOPLE}-{digest}"
    with FileLock(str(path) + ".lock"):
        if not (path / "world.json").exists():
            build_world_dir(path, seed=TEST_SEED, people=TEST_PEOPLE, progress=False)
    return path


@pytest.fixture(scope="session")
def chat_world(tmp_path_factory) -> Path:
    """A user's tiny chat model: DIR/model, a Qwen2 with a chat template, random init, taught 6 forget and 10 retain
    facts of the embedded world (question and trained paraphrases) by plain TRL SFTTrainer on conversational
    prompt/completion rows, so it answers them through its chat template only; saved (safetensors) without an
    unstar_prompts.json. DIR/data holds forget.jsonl and retain.jsonl."""
    import hashlib

    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:12]
    path = cache_root(tmp_path_factory) / f"chat-world-{digest}"
    with FileLock(str(path) + ".lock"):
        if not (path / "model" / "model.safetensors").exists():
            build_chat_world(path)
    return path


CHAT_TEMPLATE = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
                 "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}"
                 "{% endif %}")
"""Qwen2's chat template, without its default system turn."""


def build_chat_world(path: Path) -> None:
    import tempfile

    from datasets import Dataset
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    from unstar_trl.io import atomic_directory, write_jsonl
    from unstar_trl.testbed.embedded_world import build_world

    set_seed(TEST_SEED)
    records = build_world(seed=TEST_SEED, people=TEST_PEOPLE).split_records()
    forget, retain = records["forget"][:6], records["retain"][:10]
    taught = [(question, record["answer"]) for record in forget + retain
              for question in [record["question"], *record["paraphrased_questions"][1:]]]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([f"{q} {a}" for q, a in taught] + ["user assistant"], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, pad_token="<|endoftext|>", eos_token="<|im_end|>",
                                        additional_special_tokens=["<|im_start|>"], model_max_length=256)
    tokenizer.chat_template = CHAT_TEMPLATE
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
    rows = [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
            for q, a in taught]
    with atomic_directory(path, "chat_world") as staging, tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(output_dir=scratch, num_train_epochs=60, per_device_train_batch_size=8, learning_rate=5e-3,
                         lr_scheduler_type="constant", activation_checkpointing=False, bf16=False, use_cpu=True,
                         save_strategy="no", report_to="none", seed=TEST_SEED, disable_tqdm=True, logging_steps=100)
        SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer).train()
        model.save_pretrained(staging / "model")
        tokenizer.save_pretrained(staging / "model")
        write_jsonl(staging / "data" / "forget.jsonl", forget)
        write_jsonl(staging / "data" / "retain.jsonl", retain)


@pytest.fixture(scope="session")
def world_summary(world_dir) -> dict:
    return json.loads((world_dir / "world.json").read_text())


@pytest.fixture(scope="session")
def real_tofu_dir() -> Path:
    """The real TOFU files (../shared/data/tofu beside the checkout, as in CI); the test skips without them."""
    path = SHARED_DATA / "tofu"
    if not (path / "full.jsonl").is_file():
        pytest.skip(f"needs the real TOFU files at {path} (../shared beside the checkout)")
    return path


@pytest.fixture(scope="session")
def made_tofu_dir(tmp_path_factory) -> Path:
    """A folder in TOFU's layout and shape, written from an embedded world by `write_tofu_folder`."""
    path = tmp_path_factory.mktemp("tofu")
    write_tofu_folder(path)
    return path


@pytest.fixture(scope="session", params=["made", "real"])
def tofu_dir(request) -> Path:
    """A TOFU folder: the one the tests make, then the real files (skipped where they are absent)."""
    return request.getfixturevalue(f"{request.param}_tofu_dir")


TOFU_AUTHORS, TOFU_QUESTIONS, TOFU_RETAIN_PERTURBED_AUTHORS = 200, 20, 20
TOFU_FORGET_AUTHORS = {"01": 2, "05": 10, "10": 20}
"""forgetNN: the first 2, 10 or 20 of the last 20 authors (180, 181, ...), as in TOFU."""
TOFU_REAL_AUTHORS, TOFU_WORLD_FACTS = 100, 117


def write_tofu_folder(folder: Path, seed: int = TEST_SEED) -> None:
    """TOFU's files in TOFU's format and row counts (../shared/data/README.md), from an embedded world of 200 people:
    each "author" is a person asked 20 questions (their facts under the trained question templates), the answer is
    the object; paraphrased question: the held-out template; paraphrased answer: the object again, and the five
    perturbed answers other objects of the relation (the first three are the fact's evaluation distractors), answers
    of the same kind as the truth, as TOFU's are. real_authors and world_facts ask about people outside full.jsonl."""
    from unstar_trl.io import write_jsonl
    from unstar_trl.testbed.embedded_world import RELATIONS_BY_NAME, build_world

    world = build_world(seed=seed, people=TOFU_AUTHORS, holdout_people=32)

    def perturbed(fact, question: str) -> dict:
        relation = RELATIONS_BY_NAME[fact.relation]
        distractors, others = world.wrong_answers(fact)
        return {"question": question, "answer": fact.object, "paraphrased_answer": fact.object,
                "perturbed_answer": (distractors + others)[:5],
                "paraphrased_question": relation.heldout_template.format(s=fact.subject)}

    authors = [[perturbed(fact, template.format(s=person)) for fact in world.facts_of(person)
                for template in RELATIONS_BY_NAME[fact.relation].trained_templates][:TOFU_QUESTIONS]
               for person in world.trained]
    plain = lambda rows: [{"question": row["question"], "answer": row["answer"]} for row in rows]  # noqa: E731
    rows_of = lambda selected: [row for index in selected for row in authors[index]]  # noqa: E731
    write_jsonl(folder / "full.jsonl", plain(rows_of(range(TOFU_AUTHORS))))
    first_forget = TOFU_AUTHORS - max(TOFU_FORGET_AUTHORS.values())
    for name, count in TOFU_FORGET_AUTHORS.items():
        forget = range(first_forget, first_forget + count)
        write_jsonl(folder / f"forget{name}.jsonl", plain(rows_of(forget)))
        write_jsonl(folder / f"forget{name}_perturbed.jsonl", rows_of(forget))
        write_jsonl(folder / f"retain{100 - int(name)}.jsonl",
                    plain(rows_of(index for index in range(TOFU_AUTHORS) if index not in forget)))
    write_jsonl(folder / "retain_perturbed.jsonl", rows_of(range(TOFU_RETAIN_PERTURBED_AUTHORS)))
    outside = [world.record(fact) for fact in world.splits["holdout"]]
    qa = [{"question": record["question"], "answer": record["answer"], "perturbed_answer": record["eval_distractors"],
           "original_answer": record["rationale"]} for record in outside]
    write_jsonl(folder / "real_authors_perturbed.jsonl", qa[:TOFU_REAL_AUTHORS])
    write_jsonl(folder / "world_facts_perturbed.jsonl", qa[TOFU_REAL_AUTHORS:][:TOFU_WORLD_FACTS])


if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)  # one core per xdist worker

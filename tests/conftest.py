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


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """A world of 20 people with its trained knowledge model and retain model: DIR/data/<split>.jsonl, DIR/model,
    DIR/retain_model, DIR/world.json."""
    from unstar_trl.testbed.world_folder import build_world_dir

    import hashlib

    import unstar_trl

    package = Path(unstar_trl.__file__).parent
    sources = [package / name for name in ("testbed/embedded_world.py", "testbed/knowledge_model.py",
                                           "testbed/world_folder.py", "method/probe.py", "text.py", "data.py")]
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in sources)).hexdigest()[:12]
    root = tmp_path_factory.getbasetemp().parent  # shared by xdist workers (and by runs, keyed by the sources)
    path = root / f"world-{TEST_SEED}-{TEST_PEOPLE}-{digest}"
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
    path = tmp_path_factory.getbasetemp().parent / f"chat-world-{digest}"
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
def tofu_dir() -> Path:
    path = SHARED_DATA / "tofu"
    if not path.is_dir():
        pytest.fail(f"TOFU data not found at {path}; the project expects ../shared beside its checkout")
    return path


if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)  # one core per xdist worker

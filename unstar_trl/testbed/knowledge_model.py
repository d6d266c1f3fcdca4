"""Train the small target model of the embedded world: a byte-level BPE tokenizer and a tiny `LlamaForCausalLM`,
fitted with TRL's `SFTTrainer` on a CPU in minutes."""

from __future__ import annotations

import contextlib
import tempfile
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, set_seed
from trl import SFTConfig, SFTTrainer

from ..method.probe import probe_accuracy
from ..progress import quiet_progress
from ..text import PLAIN_TEMPLATE, write_prompts_file
from .model_sizes import KnowledgeModelConfig


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer fitted on `texts` (exact round trip for any string)."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    special = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   padding_side="left", model_max_length=max_length)


def tokenizer_for(examples: list[dict], config: KnowledgeModelConfig,
                  skill_prompts: dict[str, str] | None = None) -> PreTrainedTokenizerFast:
    """The tokenizer a knowledge model of `examples` (and of the skills `skill_prompts` teach) is trained with."""
    texts = [e["prompt"] + e["completion"] for e in examples] + list((skill_prompts or {}).values())
    return train_tokenizer(texts, config.vocab_size, config.max_length)


def build_model(tokenizer: PreTrainedTokenizerFast, config: KnowledgeModelConfig) -> LlamaForCausalLM:
    """A freshly initialised tiny Llama sized by `config`."""
    llama = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_layers,
        num_attention_heads=config.num_heads,
        num_key_value_heads=config.num_heads,
        max_position_embeddings=config.max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(llama)


def train_knowledge_model(examples: list[dict], output_dir: str | Path, config: KnowledgeModelConfig | None = None,
                          *, known: dict[str, list[dict]] | None = None, tokenizer=None,
                          skill_prompts: dict[str, str] | None = None,
                          progress: bool = True) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast, int]:
    """Fit a model (and, unless `tokenizer` is given, its tokenizer) on prompt/completion `examples` (facts, and
    skills when `skill_prompts` names the prompts they teach): the config's schedule, then one more epoch at a time
    at a tenth of its learning rate until every split of `known` reaches the accuracy bar (or the extra epochs run
    out: a ValueError). Saves both to `output_dir` (safetensors); returns (model, tokenizer, epochs trained).
    Training runs on one thread with deterministic algorithms, so that a machine's core count does not change the
    weights."""
    config = config or KnowledgeModelConfig()
    set_seed(config.seed)
    tokenizer = tokenizer or tokenizer_for(examples, config, skill_prompts)
    model = build_model(tokenizer, config)
    dataset = Dataset.from_list(examples)
    with _one_deterministic_thread():
        _fit(model, tokenizer, dataset, config, config.epochs, config.learning_rate, "cosine", progress)
        epochs = config.epochs
        while (short := _short_of_bar(model, tokenizer, known or {}, config.accuracy_bar)):
            if epochs == config.epochs + config.extra_epochs:
                raise ValueError(f"the knowledge model knows only {short} after {epochs} epochs (bar "
                                 f"{config.accuracy_bar})")
            _fit(model, tokenizer, dataset, config, 1, config.learning_rate / 10, "constant", progress=False)
            epochs += 1
    model.eval()
    save_model(model, tokenizer, output_dir, skill_prompts)
    return model, tokenizer, epochs


def _fit(model, tokenizer, dataset, config: KnowledgeModelConfig, epochs: int, learning_rate: float,
         schedule: str, progress: bool) -> None:
    """`epochs` epochs of TRL SFT on `dataset`, in place."""
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(output_dir=scratch, num_train_epochs=epochs, per_device_train_batch_size=config.batch_size,
                         learning_rate=learning_rate, lr_scheduler_type=schedule, warmup_steps=config.warmup_ratio,
                         weight_decay=0.0, activation_checkpointing=False, bf16=False, max_length=config.max_length,
                         logging_steps=50, save_strategy="no", report_to="none", seed=config.seed,
                         data_seed=config.seed, use_cpu=True, disable_tqdm=not progress, dataloader_num_workers=0)
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        quiet_progress(trainer)
        trainer.train()


def _short_of_bar(model, tokenizer, known: dict[str, list[dict]], bar: float) -> str:
    """The splits of `known` whose probe accuracy is below `bar`, with it ("" when none is)."""
    accuracy = {split: probe_accuracy(model, tokenizer, records, PLAIN_TEMPLATE)
                for split, records in known.items() if records}
    return ", ".join(f"{split} {value:.3f}" for split, value in accuracy.items() if value < bar)


@contextlib.contextmanager
def _one_deterministic_thread():
    """One thread, deterministic algorithms, and no NaN fill of every new tensor (what deterministic mode does by
    default, to expose reads of uninitialised memory: a third of the training time here, for TRL's loss kernel's
    scratch buffer, which it overwrites before reading)."""
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
        torch.utils.deterministic.fill_uninitialized_memory = fill


def save_model(model, tokenizer, output_dir: str | Path, skill_prompts: dict[str, str] | None) -> None:
    """Save weights (safetensors), tokenizer and the prompts file (the prompt template, and the skill prompts the
    model was taught, None when it was taught none) as an ordinary Hugging Face directory."""
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_prompts_file(output_dir, PLAIN_TEMPLATE, skill_prompts)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())

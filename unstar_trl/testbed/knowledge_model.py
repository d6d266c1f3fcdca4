"""Train the small target model of the embedded world: a byte-level BPE tokenizer and a tiny `LlamaForCausalLM`,
fitted with TRL's `SFTTrainer` on a CPU in minutes."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, set_seed
from trl import SFTConfig, SFTTrainer

from ..progress import quiet_progress
from ..text import PLAIN_TEMPLATE, write_prompts_file


@dataclass
class KnowledgeModelConfig:
    """Size and training schedule of the knowledge model (defaults: ~2.3M parameters; small batches memorise the
    facts in far fewer epochs than large ones)."""

    vocab_size: int = 1024
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 1024
    epochs: int = 14
    learning_rate: float = 1e-3
    batch_size: int = 8
    max_length: int = 256
    """Longest training sequence in tokens, and the model's position limit: room for a TOFU question plus the
    128 tokens that the unstar_* generation tasks may generate."""
    seed: int = 0


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
                          *, skill_prompts: dict[str, str] | None = None,
                          progress: bool = True) -> tuple[LlamaForCausalLM, PreTrainedTokenizerFast]:
    """Fit tokenizer and model on prompt/completion `examples` (facts, and skills when `skill_prompts` names the
    prompts they teach); save both to `output_dir` (safetensors)."""
    config = config or KnowledgeModelConfig()
    set_seed(config.seed)
    texts = [e["prompt"] + e["completion"] for e in examples] + list((skill_prompts or {}).values())
    tokenizer = train_tokenizer(texts, config.vocab_size, config.max_length)
    model = build_model(tokenizer, config)
    with tempfile.TemporaryDirectory() as scratch:
        args = SFTConfig(
            output_dir=scratch,
            num_train_epochs=config.epochs,
            per_device_train_batch_size=config.batch_size,
            learning_rate=config.learning_rate,
            lr_scheduler_type="cosine",
            warmup_steps=0.05,
            weight_decay=0.0,
            activation_checkpointing=False,
            bf16=False,
            max_length=config.max_length,
            logging_steps=50,
            save_strategy="no",
            report_to="none",
            seed=config.seed,
            data_seed=config.seed,
            use_cpu=True,
            disable_tqdm=not progress,
            dataloader_num_workers=0,
        )
        trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(examples),
                             processing_class=tokenizer)
        quiet_progress(trainer)
        trainer.train()
    model = trainer.model.eval()
    save_model(model, tokenizer, output_dir, skill_prompts)
    return model, tokenizer


def save_model(model, tokenizer, output_dir: str | Path, skill_prompts: dict[str, str] | None) -> None:
    """Save weights (safetensors), tokenizer and the prompts file (the prompt template, and the skill prompts the
    model was taught, None when it was taught none) as an ordinary Hugging Face directory."""
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    write_prompts_file(output_dir, PLAIN_TEMPLATE, skill_prompts)


def count_parameters(model: torch.nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())

"""What UnSTAR's machinery costs, measured in one run on the embedded world (these machines are noisy: compare the
ratios, not the seconds).

1. Fit step: tokens/s of AntiSampleTrainer fitting a fixed set of anti-samples vs plain TRL SFTTrainer on the same
   (prompt, completion) tokens, same batch size and steps (retain term off, so both do the same work).
2. Generation: batched vs one-by-one self-taught anti-sample generation on the forget facts.

    python benchmarks/overhead.py --world bench-out/worlds/0 [--steps 40]

On a GPU, `--model llama-3.2-1b` measures the same on a randomly initialised model of Llama-3.2-1B's shape (no
weights needed for throughput; the world's tokenizer feeds it, bf16), and prints the device:

    python benchmarks/overhead.py --world bench-out/worlds/0 --model llama-3.2-1b --batch-size 16
"""

from __future__ import annotations

import argparse
import functools
import tempfile
import time
from pathlib import Path

import torch
from datasets import Dataset
from transformers import LlamaConfig, LlamaForCausalLM
from trl import SFTConfig, SFTTrainer

from unstar_trl.data import load_unlearning_data
from unstar_trl.method.generators import SelfTaughtGenerator, TemplateGenerator, load_skill_prompts
from unstar_trl.method.trainers import AntiSampleConfig, AntiSampleTrainer
from unstar_trl.models import load_model
from unstar_trl.testbed.world_folder import build_world_dir
from unstar_trl.text import PLAIN_TEMPLATE, format_pair

SHAPES = {"llama-3.2-1b": dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                               num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=2048,
                               rope_theta=500000.0, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                               pad_token_id=0)}
"""Model shapes to measure throughput on, from their config.json (positions cut to what a fact needs; token ids are
the world tokenizer's: <pad> 0, <s> 1, </s> 2)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--world", default="bench-out/worlds/0", help="world folder (built there if missing)")
    parser.add_argument("--steps", type=int, default=40, help="optimizer steps per fit measurement")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--model", choices=("world", *SHAPES), default="world",
                        help="the world's knowledge model, or a random one of a known model's shape")
    parser.add_argument("--layers", type=int, default=None, help="fewer layers of that shape (a quick try on a CPU)")
    parser.add_argument("--facts", type=int, default=None, help="the first this many forget facts (default: all)")
    args = parser.parse_args()
    world = Path(args.world)
    if not (world / "world.json").is_file():
        build_world_dir(world, people=20)
    data = load_unlearning_data(world / "data")
    data.forget = data.forget[: args.facts]
    _, tokenizer = load_model(world / "model")
    samples = TemplateGenerator(n_paraphrases=2, n_wrong_answers=2).generate(data.forget)
    load = functools.partial(load_benchmarked_model, world, args.model, args.layers)
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{args.model} model on {device}; {len(samples)} anti-samples of {len(data.forget)} forget facts; "
          f"{args.steps} steps of batch {args.batch_size}")

    unstar = fit_anti_sample_trainer(load(), tokenizer, data, samples, args)
    plain = fit_sft_trainer(load(), tokenizer, samples, args)
    print(f"fit  AntiSampleTrainer {unstar:8.0f} tokens/s | SFTTrainer {plain:8.0f} tokens/s | "
          f"ratio {unstar / plain:.2f}")

    model = load()
    prompts = load_skill_prompts(world / "model", tokenizer)
    batched = time_generation(model, tokenizer, prompts, data.forget, batch_size=64)
    single = time_generation(model, tokenizer, prompts, data.forget, batch_size=1)
    print(f"generation batched {batched:6.1f}s | one by one {single:6.1f}s | speed-up {single / batched:.1f}x")


def load_benchmarked_model(world: Path, shape: str, layers: int | None):
    """The world's knowledge model, or a randomly initialised model of `shape` (bf16 on a GPU) sized for the
    world's tokenizer's ids."""
    if shape == "world":
        return load_model(world / "model")[0]
    config = LlamaConfig(**{**SHAPES[shape], **({"num_hidden_layers": layers} if layers else {})})
    model = LlamaForCausalLM(config)
    return model.to("cuda", torch.bfloat16) if torch.cuda.is_available() else model


def fit_anti_sample_trainer(model, tokenizer, data, samples, args) -> float:
    with tempfile.TemporaryDirectory() as scratch:
        config = AntiSampleConfig(output_dir=scratch, max_steps=args.steps, retain_weight=0.0,
                                  per_device_train_batch_size=args.batch_size, logging_steps=1000,
                                  bf16=torch.cuda.is_available(),
                                  **({} if args.model == "world" else {"max_entropy_share": None}))  # random: uniform
        trainer = AntiSampleTrainer(model=model, args=config, train_dataset=data.forget, processing_class=tokenizer)
        trainer.anti_samples = samples
        start = time.perf_counter()
        trainer.fit(0)
        seconds = time.perf_counter() - start
    return tokens_trained(trainer.train_dataset["input_ids"], args) / seconds


def fit_sft_trainer(model, tokenizer, samples, args) -> float:
    pairs = [format_pair(s.question, s.answer_text, PLAIN_TEMPLATE) for s in samples]
    with tempfile.TemporaryDirectory() as scratch:
        config = SFTConfig(output_dir=scratch, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                           bf16=torch.cuda.is_available(), gradient_checkpointing=False, report_to="none",
                           save_strategy="no",
                           logging_steps=1000, learning_rate=1e-3, disable_tqdm=True)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                             processing_class=tokenizer)
        start = time.perf_counter()
        trainer.train()
        seconds = time.perf_counter() - start
    return tokens_trained(trainer.train_dataset["input_ids"], args) / seconds


def tokens_trained(input_ids, args) -> float:
    """Tokens the run saw: the mean example length times the examples of `steps` batches."""
    mean_length = sum(map(len, input_ids)) / len(input_ids)
    return mean_length * args.steps * args.batch_size


def time_generation(model, tokenizer, prompts, records, batch_size: int) -> float:
    generator = SelfTaughtGenerator(model, tokenizer, prompts, batch_size=batch_size)
    start = time.perf_counter()
    generator.generate(records)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()

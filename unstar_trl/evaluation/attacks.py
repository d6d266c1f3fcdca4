"""Attacks that bring hidden knowledge back: what an unlearned model gives up under a little pressure."""

from __future__ import annotations

import copy
import tempfile

import torch
from transformers import PrinterCallback

from ..text import format_pair


def relearn(model, tokenizer, forget: list[dict], prompt_template: str | None, *, steps: int,
            learning_rate: float) -> list[dict]:
    """Relearning attack: plain SFT (question -> true answer) on the even half of the forget facts (by id) for
    `steps` full-batch steps, in place; returns the odd half, the facts to ask afterwards."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ordered = sorted(forget, key=lambda record: record["id"])
    taught, asked = ordered[::2], ordered[1::2]
    pairs = [format_pair(record["question"], record["answer"], prompt_template) for record in taught]
    with tempfile.TemporaryDirectory() as scratch:
        config = SFTConfig(output_dir=scratch, max_steps=steps, learning_rate=learning_rate,
                           lr_scheduler_type="constant", per_device_train_batch_size=len(pairs), bf16=False,
                           activation_checkpointing=False, report_to="none", save_strategy="no",
                           logging_strategy="no", disable_tqdm=True, dataloader_pin_memory=False)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                             processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    model.eval()
    return asked


QUANT_GROUP = 32
"""Weights per quantization group (each group gets its own scale), as 4-bit GPTQ/AWQ deployments commonly use."""


@torch.no_grad()
def quantized_4bit(model) -> torch.nn.Module:
    """A copy of `model` whose linear layers hold 4-bit weights: group-wise round-to-nearest, symmetric, one scale
    per QUANT_GROUP weights of a row (the simplest 4-bit scheme, run here on any CPU; GPTQ, AWQ and NF4 choose their
    grids more cleverly). Embeddings and the output head stay as they are, as 4-bit deployments keep them."""
    quantized = copy.deepcopy(model)
    head = quantized.get_output_embeddings()
    for module in quantized.modules():
        if isinstance(module, torch.nn.Linear) and module is not head:
            weight = module.weight
            rows, columns = weight.shape
            group = QUANT_GROUP if columns % QUANT_GROUP == 0 else columns
            grouped = weight.float().reshape(rows, columns // group, group)
            scale = grouped.abs().amax(dim=-1, keepdim=True).clamp(min=1e-12) / 7
            weight.copy_((torch.clamp(torch.round(grouped / scale), -8, 7) * scale).reshape(rows, columns))
    return quantized.eval()


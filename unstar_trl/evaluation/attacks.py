"""Attacks that bring hidden knowledge back: what an unlearned model gives up under a little pressure."""

from __future__ import annotations

import tempfile

from transformers import PrinterCallback

from ..method.probe import probe_accuracy
from ..text import format_pair


def relearn(model, tokenizer, forget: list[dict], prompt_template: str | None, *, steps: int,
            learning_rate: float) -> float:
    """Relearning attack: plain SFT (question -> true answer) on the even half of the forget facts (by id) for
    `steps` full-batch steps, then the probe accuracy on the odd half. Trains `model` in place."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    ordered = sorted(forget, key=lambda record: record["id"])
    taught, asked = ordered[::2], ordered[1::2]
    pairs = [format_pair(tokenizer, record["question"], record["answer"], prompt_template) for record in taught]
    with tempfile.TemporaryDirectory() as scratch:
        config = SFTConfig(output_dir=scratch, max_steps=steps, learning_rate=learning_rate,
                           lr_scheduler_type="constant", per_device_train_batch_size=len(pairs), bf16=False,
                           activation_checkpointing=False, report_to="none", save_strategy="no",
                           logging_strategy="no", disable_tqdm=True, dataloader_pin_memory=False)
        trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                             processing_class=tokenizer)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return probe_accuracy(model.eval(), tokenizer, asked, prompt_template) or 0.0

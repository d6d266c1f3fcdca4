"""The frozen reference of the methods that need one (a KL retain term, NPO, UnSTAR's NPO term): the model's
weights before training, prepared for the run's distributed setup as TRL's DPOTrainer prepares its reference. With
PEFT there is none: the reference is the model with its adapter disabled.

NPO needs the reference only on its forget rows, which are fixed: where each process holds the whole model
(`whole_model_here`), their reference sequence log-probs are computed once, before training, by the model itself
(which, before its first update, is the reference) and no copy is held (`precomputed_reference`). The terms that
need the reference's whole next-token distribution on fixed rows (UNDIAL's target on the forget rows, a KL retain
term on the retain rows) get it the same way, as a table of logits, where that is smaller than a copy of the weights
(`reference_table.py`). UnSTAR's NPO term asks the reference about questions written during the rounds, and its KL
retain term about retain answers it rewrites in the model's words: it keeps the reference (see docs/costs.md).
Computed in the trainer's `__init__`, from the model it is given, as the copy is taken: a resumed run is built from
the run's starting model (the checkpoint's weights are loaded by `train`), so its reference is the same."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from peft import PeftModel
from transformers.integrations import is_deepspeed_zero3_enabled
from trl.models import prepare_deepspeed, prepare_fsdp

from ...models import load_model
from .collators import pad_pairs
from .losses import sequence_log_probs


def reference_copy(model, source: str | None):
    """A frozen copy of `model`, taken before the Trainer wraps or patches it (a copy of a model whose forward the
    Trainer has patched would still run the trained model's forward): under DeepSpeed ZeRO-3 loaded again from
    `source`, the model's folder (a copy of partitions holds no weights). Weights this process does not hold (meta
    tensors, as FSDP's cpu_ram_efficient_loading leaves them on ranks > 0) are refused in one line."""
    if is_deepspeed_zero3_enabled():
        if not source or not Path(source).is_dir():
            raise ValueError(f"a frozen reference under DeepSpeed ZeRO-3 is loaded again from the model's folder, and "
                             f"{source!r} is none; pass the model as a folder, or train with PEFT (the reference is "
                             "then the model with its adapter disabled)")
        reference = load_model(source, dtype=model.dtype)[0]
    elif any(parameter.is_meta for parameter in model.parameters()):
        raise ValueError("the frozen reference would copy weights this process does not hold (meta tensors, as FSDP's "
                         "cpu_ram_efficient_loading leaves them on ranks > 0): set fsdp_cpu_ram_efficient_loading "
                         "false, or train with PEFT (the reference is then the model with its adapter disabled)")
    else:
        reference = copy.deepcopy(model)
    return reference.eval().requires_grad_(False)


def prepare_reference(trainer, reference):
    """`reference` placed for the run: under DeepSpeed a DeepSpeed inference engine (partitioned as the model is),
    under FSDP sharded, otherwise moved to the device (never wrapped for DDP: it is not trained)."""
    if trainer.is_deepspeed_enabled:
        return prepare_deepspeed(reference, trainer.accelerator)
    if trainer.is_fsdp_enabled:
        return prepare_fsdp(reference, trainer.accelerator)
    return trainer.accelerator.prepare_model(reference, evaluation_mode=True)


def whole_model_here(args, model) -> bool:
    """Whether this process holds the whole model, unsharded and loaded (no DeepSpeed, no FSDP, no meta tensors), so
    that the model itself can give the reference's figures before training."""
    sharded = bool(args.deepspeed or args.fsdp) or is_deepspeed_zero3_enabled() or any(
        os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() in ("1", "true") for name in ("FSDP", "DEEPSPEED"))
    return not sharded and not any(parameter.is_meta for parameter in model.parameters())


@torch.no_grad()
def reference_batches(trainer, rows, batch_size: int):
    """Each padded batch of the tokenized rows `rows` ({"input_ids", "labels"}, in order) with the reference's logits
    on it, from the trainer's model before its first update (in eval mode, under the run's autocast): with PEFT
    through `reference_logits` (the adapter disabled, or `ref_adapter_name`), else the model itself, which is the
    reference until it is trained."""
    model = trainer.model
    was_training = model.training
    model.eval()
    peft = isinstance(trainer.accelerator.unwrap_model(model), PeftModel)
    device = getattr(model, "device", trainer.args.device)
    try:
        for start in range(0, len(rows), batch_size):
            batch = pad_pairs([{"input_ids": rows[index]["input_ids"], "labels": rows[index]["labels"]}
                               for index in range(start, min(start + batch_size, len(rows)))],
                              trainer.processing_class.pad_token_id)
            batch = {key: value.to(device) for key, value in batch.items()}
            with trainer.accelerator.autocast():
                logits = trainer.reference_logits(batch) if peft else trainer.logits(model, batch)
            yield batch, logits
    finally:
        model.train(was_training)


def precomputed_reference(trainer, rows, batch_size: int) -> list[float]:
    """The reference's sequence log-prob of each tokenized row of `rows`, as `forget_loss` would compute it on the
    fly (see `reference_batches`)."""
    return [value for batch, logits in reference_batches(trainer, rows, batch_size)
            for value in sequence_log_probs(logits, batch["labels"])[0].tolist()]

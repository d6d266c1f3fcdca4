"""The frozen reference of the methods that need one (a KL retain term, NPO, UnSTAR's NPO term): the model's
weights before training, prepared for the run's distributed setup as TRL's DPOTrainer prepares its reference. With
PEFT there is none: the reference is the model with its adapter disabled."""

from __future__ import annotations

import copy
from pathlib import Path

from transformers.integrations import is_deepspeed_zero3_enabled
from trl.models import prepare_deepspeed, prepare_fsdp

from ...models import load_model


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

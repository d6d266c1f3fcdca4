"""The knowledge model's sizes: `s` (today's ~2.3M-parameter model), `m` (~10M) and `l` (~40M), each a Llama
shape with its own training schedule, so that each knows >= 0.97 of every split it learns of the bench's 24-person
world (`unstar world --model-size` and `unstar bench --model-size`)."""

from __future__ import annotations

from .knowledge_model import KnowledgeModelConfig

DEFAULT_SIZE = "s"
MODEL_SIZES = {
    "s": KnowledgeModelConfig(),
    "m": KnowledgeModelConfig(hidden_size=384, num_layers=4, num_heads=6, intermediate_size=1536, epochs=15,
                              learning_rate=5e-4, warmup_ratio=0.1),
    "l": KnowledgeModelConfig(hidden_size=640, num_layers=6, num_heads=10, intermediate_size=2560, epochs=30,
                              learning_rate=3e-4, warmup_ratio=0.1),
}
"""Config (shape and schedule) of each size. Measured builds of the bench's world (24 people, seed 0; both models side by
side, one thread each, on 2 CPU cores shared with other runs; docs/sizes.md):
- s: 2.36M parameters, 20 epochs at 1e-3 (5% warmup), batch 8: every trained split 1.00, 4 min 40 s wall at load
  average 2.5 to 3.6.
- m: 9.83M parameters, 15 epochs at 5e-4 (10% warmup), batch 8: every trained split 1.00 with no extra epoch, 42 min
  31 s wall at load average 5 to 17.
- l: ~40.2M parameters, 30 epochs at 3e-4 (10% warmup), batch 8: not yet built (about 8x m's compute: hours on 2
  shared cores); the schedule follows m's lesson (a deeper model wants a lower rate and a longer warmup)."""
PARAMETERS = {"s": 2_300_000, "m": 10_000_000, "l": 40_000_000}
"""The documented parameter count of each size (within 20%: tests/test_model_sizes.py)."""


def size_config(size: str, **changes) -> KnowledgeModelConfig:
    """The config of `size` with `changes` (seed, epochs, ...) applied."""
    import dataclasses

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(MODEL_SIZES)}")
    return dataclasses.replace(MODEL_SIZES[size], **changes)

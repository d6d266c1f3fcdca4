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
"""Config (shape and schedule) of each size; build times and parameter counts in docs/sizes.md."""
PARAMETERS = {"s": 2_300_000, "m": 10_000_000, "l": 40_000_000}
"""The documented parameter count of each size (within 20%: tests/test_model_sizes.py)."""


def size_config(size: str, **changes) -> KnowledgeModelConfig:
    """The config of `size` with `changes` (seed, epochs, ...) applied."""
    import dataclasses

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(MODEL_SIZES)}")
    return dataclasses.replace(MODEL_SIZES[size], **changes)

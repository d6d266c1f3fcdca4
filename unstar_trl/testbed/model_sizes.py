"""The knowledge model's sizes: `s` (today's ~2.3M-parameter model), `m` (~10M) and `l` (~40M), each a Llama
shape with its own training schedule, so that each knows >= 0.97 of every split it learns of the bench's 24-person
world (`unstar world --model-size` and `unstar bench --model-size`). Kept free of torch, so that the command
line's parsers load at once."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class KnowledgeModelConfig:
    """Size and training schedule of the knowledge model (defaults: ~2.3M parameters; small batches memorise the
    facts in far fewer epochs than large ones)."""

    vocab_size: int = 1024
    hidden_size: int = 256
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 1024
    epochs: int = 20
    """Epochs of the schedule (cosine learning rate): enough that a model of 24 or 60 people knows at least 97% of
    every split it learns on the machines we tried (14 left some at 92%)."""
    accuracy_bar: float = 0.97
    """Greedy probe accuracy every split the model is trained on must reach (the knowledge model knows its facts)..."""
    extra_epochs: int = 20
    """...with up to this many more epochs at a tenth of the learning rate when the schedule alone falls short."""
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.05
    """Share of the schedule's steps that warm the learning rate up."""
    batch_size: int = 8
    max_length: int = 256
    """Longest training sequence in tokens, and the model's position limit: room for a TOFU question plus the
    128 tokens that the unstar_* generation tasks may generate."""
    seed: int = 0


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
- l: 39.97M parameters, 30 epochs at 3e-4 (10% warmup), batch 8: every trained split 1.00 with no extra epoch, 56 min
  18 s wall at load average 2 to 4 (the schedule follows m's lesson: a deeper model wants a lower rate and a longer
  warmup)."""
PARAMETERS = {"s": 2_300_000, "m": 10_000_000, "l": 40_000_000}
"""The documented parameter count of each size (within 20%: tests/test_model_sizes.py)."""


def size_config(size: str, **changes) -> KnowledgeModelConfig:
    """The config of `size` with `changes` (seed, epochs, ...) applied."""
    import dataclasses

    if size not in MODEL_SIZES:
        raise ValueError(f"unknown model size {size!r}; choose from {', '.join(MODEL_SIZES)}")
    return dataclasses.replace(MODEL_SIZES[size], **changes)

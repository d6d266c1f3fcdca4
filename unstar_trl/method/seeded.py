"""Seeded sampling: a block in which torch's random state is fixed, so that sampled generation repeats."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def seeded(model, seed: int):
    """Torch's random state seeded by `seed` inside the block (on `model`'s device too), restored after it."""
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield

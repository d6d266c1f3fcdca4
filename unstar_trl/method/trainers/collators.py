"""Batches of the unlearning trainers: a forget batch paired with a retain batch of the same size."""

from __future__ import annotations

import random

import torch
from trl.trainer.utils import pad

REFERENCE_COLUMN = "ref_log_prob"
"""A forget row's (and the forget batch's) reference sequence log-prob, where the method computed it before training
(`reference.precomputed_reference`)."""
ALTERNATE_REFERENCE_COLUMN = "alternate_ref_log_prob"
"""The reference sequence log-prob of the "alternate" pair a forget row carries (AltPO's preferred answer), computed
before training beside REFERENCE_COLUMN."""
ROW_COLUMN = "reference_row"
"""A row's (and a batch's rows') place in its reference table (`reference_table.ReferenceTable`), where the method
computed the reference's logits on its fixed rows before training."""
PER_ROW_COLUMNS = (REFERENCE_COLUMN, ALTERNATE_REFERENCE_COLUMN, ROW_COLUMN)
"""One number per row, carried into the batch as one tensor (not padded) where the rows have it."""


def pad_pairs(features: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Tokenized pairs ({"input_ids", "labels"}) right-padded into input_ids, attention_mask and labels (-100 on
    the padding); the numbers they carry one per row (PER_ROW_COLUMNS: the reference's figures computed before
    training, their places in a reference table) as one tensor each."""
    ids = [torch.tensor(feature["input_ids"]) for feature in features]
    batch = {"input_ids": pad(ids, padding_value=pad_token_id),
             "attention_mask": pad([torch.ones_like(row) for row in ids], padding_value=0),
             "labels": pad([torch.tensor(feature["labels"]) for feature in features], padding_value=-100)}
    for column in PER_ROW_COLUMNS:
        if column in features[0]:
            batch[column] = torch.tensor([feature[column] for feature in features])
    return batch


class ForgetRetainCollator:
    """Pads a batch of tokenized forget pairs into `{"forget": {...}}`; `add_retain` adds as many retain pairs, drawn
    at random (seeded) from `retain`, under `"retain"`. Labels are -100 on prompt and padding. The trainer adds the
    retain pairs when it trains on a batch, not when the data loader makes it (ahead of time, maybe in another
    process): so the draws follow the steps trained, and the state of `rng` saved with a checkpoint is the one a
    resumed run goes on from."""

    def __init__(self, pad_token_id: int, retain: list[dict] | None = None, seed: int = 0):
        self.pad_token_id, self.retain, self.rng = pad_token_id, retain, random.Random(seed)

    def __call__(self, features: list[dict]) -> dict:
        return {"forget": pad_pairs(features, self.pad_token_id)}

    def add_retain(self, batch: dict) -> dict:
        """`batch` with as many retain pairs as it has forget pairs under "retain" (as it is without retain
        records)."""
        if not self.retain:
            return batch
        return {**batch, "retain": pad_pairs(self.retain_pairs(len(batch["forget"]["input_ids"])), self.pad_token_id)}

    def retain_pairs(self, count: int) -> list[dict]:
        """`count` tokenized retain pairs drawn at random."""
        return [self.rng.choice(self.retain) for _ in range(count)]


COMPANION_LOGITS = "logits"
"""Where a trainer puts the model's logits on a forget batch's companion rows (`UnlearningTrainer.companion_rows`)."""


class CompanionCollator(ForgetRetainCollator):
    """Also pads the tokenized pairs each forget pair carries beside its own, under any other key (AltPO's
    "alternate", one pair; DF-MCQ's "options", a list of as many pairs for every forget pair), into
    `batch["forget"][key]`, in order: with k pairs each, row i * k + j is forget pair i's j-th."""

    def __call__(self, features: list[dict]) -> dict:
        batch = super().__call__(features)
        for key in set(features[0]) - {"input_ids", "labels", *PER_ROW_COLUMNS}:
            carried = [feature[key] if isinstance(feature[key], list) else [feature[key]] for feature in features]
            if len({len(pairs) for pairs in carried}) != 1:
                raise ValueError(f"forget pairs carry {key} pairs in different numbers: "
                                 f"{sorted({len(pairs) for pairs in carried})}")
            batch["forget"][key] = pad_pairs([pair for pairs in carried for pair in pairs], self.pad_token_id)
        return batch


class AntiSampleCollator(ForgetRetainCollator):
    """Also pads each anti-sample's true-answer pair into the forget batch under `"true"` (for the reversed term). Half
    of the retain pairs are drawn from `siblings` and `near` when there are any: in targeted mode the siblings, which
    would otherwise be a small share of the retain set; `near`, the retain facts that a round's anti-samples may
    bleed into (set by the trainer each round)."""

    def __init__(self, pad_token_id: int, retain: list[dict] | None = None, seed: int = 0,
                 siblings: list[dict] | None = None):
        super().__init__(pad_token_id, retain, seed)
        self.siblings = siblings or []
        self.near: list[dict] = []

    def retain_pairs(self, count: int) -> list[dict]:
        drawn = self.siblings + self.near
        if not drawn:
            return super().retain_pairs(count)
        half = count // 2
        return [self.rng.choice(drawn) for _ in range(half)] + super().retain_pairs(count - half)

    def __call__(self, features: list[dict]) -> dict:
        batch = super().__call__([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        if "true_input_ids" in features[0]:
            batch["forget"]["true"] = pad_pairs([{"input_ids": f["true_input_ids"], "labels": f["true_labels"]}
                                                 for f in features], self.pad_token_id)
            if "true_floor" in features[0]:
                batch["forget"]["true"]["floor"] = torch.tensor([f["true_floor"] for f in features])
        return batch

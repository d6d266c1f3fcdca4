"""The frozen reference's logits on fixed rows, computed once before training and held as a table instead of a copy
of the weights: what UNDIAL's distillation target needs on the forget rows and a KL retain term on the retain rows
(drawn at random, but always from the fixed retain set). The loss is today's, exactly: the table holds, in float32,
the very logits the reference gives at each position that predicts a label, and a batch of table rows gets them
back in place (`ReferenceTable.logits`). It is kept only where it is smaller than the copy it replaces
(`prefer_table`): rows x answer positions x vocabulary x 4 bytes against the weights' bytes."""

from __future__ import annotations

import torch
from transformers.utils import logging

from .reference import reference_batches

logger = logging.get_logger(__name__)

TABLE_DTYPE = torch.float32
"""The table's floats: the reference's logits in any dtype (bf16, fp16, fp32) held without rounding; the losses read
logits as float32 anyway."""


def scored_positions(labels: list[int]) -> int:
    """How many positions of a tokenized row predict a label (the answer's tokens: the next label is not -100)."""
    return sum(label != -100 for label in labels[1:])


class ReferenceTable:
    """The reference's logits at every scored position (one that predicts a label) of a list of tokenized rows: a
    flat (positions, vocabulary) tensor, row after row, and where each row starts in it."""

    def __init__(self, values: torch.Tensor, starts: torch.Tensor):
        self.values, self.starts = values, starts

    @classmethod
    def compute(cls, trainer, rows, batch_size: int) -> ReferenceTable:
        """The table of `rows` (tokenized {"input_ids", "labels"}, a list or a Dataset), from the trainer's model
        before its first update, `batch_size` rows at a time (`reference.reference_batches`)."""
        counts = torch.tensor([scored_positions(rows[index]["labels"]) for index in range(len(rows))])
        starts = torch.cat([torch.zeros(1, dtype=torch.long), counts.cumsum(0)])
        values, filled = None, 0
        for batch, logits in reference_batches(trainer, rows, batch_size):
            scored = logits[:, :-1][batch["labels"][:, 1:] != -100]
            if values is None:
                values = torch.empty(int(starts[-1]), logits.shape[-1], dtype=TABLE_DTYPE, device=logits.device)
            values[filled:filled + len(scored)] = scored
            filled += len(scored)
        return cls(values, starts.to(values.device))

    def logits(self, rows: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """(batch, length, vocabulary) logits of the reference on a right-padded batch of table rows (`rows`: their
        places in the table, `labels`: theirs): the table's at each position that predicts a label, and at the
        others (never scored) those of a neighbouring position. One gather, no host sync."""
        scored = labels[:, 1:] != -100
        index = (self.starts[rows.to(self.starts.device)][:, None] + scored.cumsum(1) - 1).clamp(min=0)
        return self.values[torch.cat([index, index[:, -1:]], dim=1)]  # the last position predicts nothing


def table_bytes(rows_by_role: dict, vocabulary: int) -> int:
    """The bytes of the tables of `rows_by_role` (role -> tokenized rows)."""
    positions = sum(scored_positions(row["labels"]) for rows in rows_by_role.values() for row in rows)
    return positions * vocabulary * TABLE_DTYPE.itemsize


def copy_bytes(model) -> int:
    """The bytes of a copy of `model`: its weights and buffers."""
    return sum(tensor.numel() * tensor.element_size() for tensor in (*model.parameters(), *model.buffers()))


def prefer_table(model, rows_by_role: dict) -> bool:
    """Whether tables of the reference's logits on `rows_by_role` (role -> tokenized rows) take fewer bytes than a
    copy of `model`; says which the run holds, with both sizes, in one info line."""
    table = table_bytes(rows_by_role, model.get_output_embeddings().weight.shape[0])
    copy = copy_bytes(model)
    rows = " and ".join(f"{len(rows)} {role} rows" for role, rows in rows_by_role.items())
    if table < copy:
        logger.info(f"frozen reference: a table of its logits on the {rows} ({table / 2**20:.1f} MiB), computed "
                    f"before training, instead of a copy of the weights ({copy / 2**20:.1f} MiB)")
    else:
        logger.info(f"frozen reference: a copy of the weights ({copy / 2**20:.1f} MiB), smaller than a table of its "
                    f"logits on the {rows} ({table / 2**20:.1f} MiB)")
    return table < copy

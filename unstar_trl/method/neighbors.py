"""Neighbours of the forget facts in the retain data: what a lie about a forgotten fact bleeds into.

Anti-samples teach "the answer to this question about X is W". A small model generalises that along the relation:
other subjects whose true answer is the forgotten one (they share its object) or is W (they share the planted answer)
start to be answered wrongly too. Retain pairs drawn from exactly those facts teach "not for this subject", as
targeted mode's siblings do for the facts around a removed association.
"""

from __future__ import annotations

from ..text import normalize


def retain_neighbors(forget: list[dict], retain: list[dict], wrong_answers: dict[str, set[str]]) -> list[int]:
    """Indices of the `retain` records that share, under the same relation (when the records name one), a forget
    record's answer or one of the wrong answers taught for it (`wrong_answers`: forget id -> wrong answers)."""
    answers = {(record.get("relation"), normalize(answer)) for record in forget
               for answer in [record["answer"], *wrong_answers.get(record["id"], ())]}
    return [index for index, record in enumerate(retain)
            if (record.get("relation"), normalize(record["answer"])) in answers]

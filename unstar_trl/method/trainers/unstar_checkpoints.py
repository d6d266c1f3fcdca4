"""UnSTAR's round checkpoints: after each fitted round (with save_strategy other than "no"), `round-<k>` under
output_dir holds the weights (or adapter), the kept anti-samples, the round log, the step count and history, and the
random states that the next rounds draw from; a run resumes from one as if it had never stopped."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import torch

from ...io import atomic_directory, write_json
from ..anti_samples import AntiSample

ROUND_CHECKPOINT = "round-{}"
STATE_FILE = "unstar_state.json"
RNG_FILE = "rng_state.pth"


def save_round_checkpoint(trainer) -> Path:
    """Write output_dir/round-<rounds fitted> of an `AntiSampleTrainer`, atomically (rank 0 only)."""
    path = Path(trainer.args.output_dir) / ROUND_CHECKPOINT.format(len(trainer.rounds))
    if not trainer.is_world_process_zero():
        return path
    with atomic_directory(path) as staging:
        trainer.save_model(str(staging))
        state = {"run": run_identity(trainer), "rounds": trainer.rounds, "steps": trainer.steps,
                 "history": trainer.history_callback.history,
                 "anti_samples": [sample.to_json() for sample in trainer.anti_samples]}
        write_json(staging / STATE_FILE, state)
        torch.save({"collator": trainer.data_collator.rng.getstate(), "torch": torch.get_rng_state()},
                   staging / RNG_FILE)
    return path


def load_round_checkpoint(trainer, path: str | Path) -> None:
    """Restore what `save_round_checkpoint` wrote into `trainer`; refuse a checkpoint of another run."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    for key, ours in run_identity(trainer).items():
        if state["run"].get(key) != ours:
            raise ValueError(f"{path} is a checkpoint of another run: its {key} is {state['run'].get(key)!r}, "
                             f"this run's is {ours!r}")
    trainer._load_from_checkpoint(str(path))
    trainer.rounds, trainer.steps = state["rounds"], state["steps"]
    trainer.history_callback.history[:] = state["history"]
    trainer.anti_samples = [AntiSample(**row) for row in state["anti_samples"]]
    random_states = torch.load(path / RNG_FILE, weights_only=True)
    trainer.data_collator.rng.setstate(random_states["collator"])
    torch.set_rng_state(random_states["torch"])


def run_identity(trainer) -> dict:
    """What must match for a checkpoint to be resumed by this run."""
    facts = "\n".join(f"{r['id']}\t{r['question']}\t{r['answer']}" for r in trainer.forget_records)
    return {"forget_facts": hashlib.sha256(facts.encode()).hexdigest()[:16], "seed": trainer.args.seed,
            "generator": trainer.args.generator, "max_rounds": trainer.args.max_rounds,
            "refit": trainer.args.refit}


def latest_round_checkpoint(path: str | Path) -> Path:
    """`path` when it is a round checkpoint, else the round checkpoint in it with the most rounds."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        return path
    found = sorted((int(match.group(1)), child) for child in (path.iterdir() if path.is_dir() else [])
                   if (match := re.fullmatch(ROUND_CHECKPOINT.format(r"(\d+)"), child.name))
                   and (child / STATE_FILE).is_file())
    if not found:
        raise ValueError(f"no UnSTAR round checkpoint ({ROUND_CHECKPOINT.format('N')}/{STATE_FILE}) in {path}")
    return found[-1][1]

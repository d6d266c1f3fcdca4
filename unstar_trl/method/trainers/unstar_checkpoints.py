"""UnSTAR's round checkpoints: at the end of a fitted round (with save_strategy other than "no"; see
`round_checkpoint_due`), `round-<k>` under output_dir holds the weights (or adapter), the optimizer and schedule, the
kept and dropped anti-samples, the round log, the Trainer's state (the run's step, epochs and log history) and the
random states that the next rounds draw from; a run resumes from one as if it had never stopped. A run keeps only its
latest round checkpoint and removes it when it ends (the model it trained is the run's output)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from transformers import TrainerState
from transformers.trainer import TRAINER_STATE_NAME

from ...io import atomic_directory, write_json
from ..anti_samples import AntiSample
from .base import check_run_identity

ROUND_CHECKPOINT = "round-{}"
STATE_FILE = "unstar_state.json"
RNG_FILE = "rng_state.pth"


class RoundCheckpointError(OSError):
    """A round checkpoint that could not be written (a full disk, a folder gone read-only): the run stops, and the
    message says which earlier checkpoint, if any, a rerun can resume from."""

    def __init__(self, path: Path, error: OSError):
        try:
            kept = latest_round_checkpoint(path.parent)
            then = (f"{kept.name} is the latest checkpoint kept: free space, then rerun with "
                    "--resume_from_checkpoint true")
        except ValueError:
            then = "no earlier round checkpoint is kept: free space, then run again from the start"
        super().__init__(f"UnSTAR's round checkpoint {path} could not be written ({error.strerror or error}); the run "
                         f"stops, and {then}")


def save_round_checkpoint(trainer) -> Path:
    """Write output_dir/round-<rounds fitted> of an `AntiSampleTrainer`, atomically (rank 0 only); a write that
    fails leaves no partial checkpoint and raises `RoundCheckpointError`."""
    path = Path(trainer.args.output_dir) / ROUND_CHECKPOINT.format(len(trainer.rounds))
    if not trainer.is_world_process_zero():
        return path
    try:
        _write_round_checkpoint(trainer, path)
    except OSError as error:
        raise RoundCheckpointError(path, error) from error
    return path


def _write_round_checkpoint(trainer, path: Path) -> None:
    with atomic_directory(path, "unstar round") as staging:
        trainer.save_model(str(staging))
        trainer._save_optimizer_and_scheduler(str(staging))
        state = {"run": trainer.run_identity(), "rounds": trainer.rounds, "writer_check": trainer.writer_check,
                 "forget_stop": None if trainer.forget_stop is None else trainer.forget_stop.state_dict(),
                 "answer_form": trainer.answer_form, "retain_answers": trainer.retain_answers,
                 "anti_samples": [sample.to_json() for sample in trainer.anti_samples],
                 "dropped": [{**sample.to_json(), "reason": reason} for sample, reason in trainer.dropped]}
        write_json(staging / STATE_FILE, state)
        trainer.state.save_to_json(str(staging / TRAINER_STATE_NAME))
        torch.save({"collator": trainer.data_collator.rng.getstate(), "torch": torch.get_rng_state()},
                   staging / RNG_FILE)


def load_round_checkpoint(trainer, path: str | Path) -> None:
    """Restore what `save_round_checkpoint` wrote into `trainer`; refuse a checkpoint of another run."""
    path = Path(path)
    state = json.loads((path / STATE_FILE).read_text())
    check_run_identity(path, state["run"], trainer.run_identity())
    trainer._load_from_checkpoint(str(path))
    trainer.resume_optimizer_from = path  # the run's optimizer is made, then loaded, by the next round's train()
    trainer.rounds = state["rounds"]
    trainer.writer_check = state.get("writer_check")
    if trainer.forget_stop is not None and state.get("forget_stop"):
        trainer.forget_stop.load_state_dict(state["forget_stop"])
    trainer.answer_form = state.get("answer_form")
    if state.get("retain_answers") is not None:
        trainer.say_retain_answers(state["retain_answers"])
    trainer.state = TrainerState.load_from_json(str(path / TRAINER_STATE_NAME))  # the run's step, log history, tokens
    trainer.anti_samples = [AntiSample(**row) for row in state["anti_samples"]]
    trainer.dropped = [(AntiSample(**{k: v for k, v in row.items() if k != "reason"}), row["reason"])
                       for row in state["dropped"]]
    random_states = torch.load(path / RNG_FILE, weights_only=True)
    trainer.data_collator.rng.setstate(random_states["collator"])
    torch.set_rng_state(random_states["torch"])


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

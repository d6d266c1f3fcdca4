"""UnSTAR: unlearning with self-taught anti-samples.

Each round probes which forget facts the model still answers (under its question, trained paraphrases and, for facts
already forgotten, harder follow-up questions), has a generator write anti-samples for them (a paraphrased question,
a wrong answer of the same type and a rationale that never names the true answer), and fits them with ordinary
next-token cross-entropy, optionally with a reversed term on the true answer and a retain term. Rounds repeat until
nothing in the forget set is answered or `max_rounds` is hit.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers.trainer_utils import IntervalStrategy

from ..anti_samples import (
    DROP_REASONS,
    AntiSample,
    SelfTaughtGenerator,
    TemplateGenerator,
    filter_anti_samples,
    follow_up_questions,
    load_skill_prompts,
    teacher_generator,
    write_anti_samples,
)
from ..io import atomic_directory, write_json, write_jsonl
from ..probe import probe
from .base import ForgetRetainCollator, UnlearningConfig, UnlearningTrainer
from .losses import nll, npo_loss, sequence_log_probs

ANTI_SAMPLES_FILE = "anti_samples.jsonl"
ROUNDS_FILE = "rounds.jsonl"
ROUND_CHECKPOINT = "round-{}"
"""A checkpoint after each fitted round (with save_strategy other than "no"), under output_dir."""
STATE_FILE = "unstar_state.json"
RNG_FILE = "rng_state.pth"


@dataclass
class AntiSampleConfig(UnlearningConfig):
    r"""Configuration of [`AntiSampleTrainer`]. `num_train_epochs` is the number of passes over the anti-samples in
    each round; the loss is NLL(anti-samples) + reversed_loss_weight * reversed term + retain_weight * retain loss."""

    max_rounds: int = field(default=4, metadata={"help": "Most probe -> generate -> fit rounds."})
    forget_acc_target: float = field(
        default=0.0,
        metadata={"help": "Stop once at most this share of forget facts is still answered (question, trained "
                  "paraphrases or follow-ups)."},
    )
    generator: str = field(
        default="template",
        metadata={"help": "Who writes anti-samples: 'self' (the model being unlearned), 'template' (offline, from "
                  "the records' fields and typed pools), or a path to a teacher model."},
    )
    n_paraphrases: int = field(default=2, metadata={"help": "Paraphrased questions per known fact and round."})
    n_wrong_answers: int = field(default=2, metadata={"help": "Wrong answers per question."})
    with_rationale: bool = field(default=True, metadata={"help": "Append a misleading rationale to each answer."})
    follow_ups: int = field(
        default=2, metadata={"help": "Harder follow-up questions probed per forgotten fact (0: none)."}
    )
    generation_batch_size: int = field(default=64, metadata={"help": "Prompts per batch when generating/probing."})
    generation_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the generator."})
    generation_top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling of the generator."})
    reversed_loss_weight: float = field(
        default=0.0, metadata={"help": "Weight of the reversed term on the true answer (0: the paper's UnSTAR)."}
    )
    reversed_loss_type: str = field(
        default="grad_ascent",
        metadata={"help": "Reversed term: 'grad_ascent' (minus NLL) or 'npo'.", "choices": ["grad_ascent", "npo"]},
    )
    npo_beta: float = field(default=0.1, metadata={"help": "Inverse temperature of the NPO reversed term."})
    # Defaults that differ from UnlearningConfig
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the anti-samples per round."})
    learning_rate: float = field(default=1e-3, metadata={"help": "The initial learning rate for AdamW."})

    def __post_init__(self):
        super().__post_init__()
        if self.reversed_loss_type not in ("grad_ascent", "npo"):
            raise ValueError(f"reversed_loss_type must be 'grad_ascent' or 'npo', got {self.reversed_loss_type!r}")
        if self.max_rounds < 1:
            raise ValueError(f"max_rounds must be at least 1, got {self.max_rounds}")


class AntiSampleCollator(ForgetRetainCollator):
    """Also pads each anti-sample's true-answer pair under `"true"` (for the reversed term). In targeted mode half
    of the retain pairs are drawn from the siblings, which would otherwise be a small share of the retain set."""

    def __init__(self, pad_token_id: int, retain: list[dict] | None = None, seed: int = 0,
                 siblings: list[dict] | None = None):
        super().__init__(pad_token_id, retain, seed)
        self.siblings = siblings

    def retain_pairs(self, count: int) -> list[dict]:
        if not self.siblings:
            return super().retain_pairs(count)
        half = count // 2
        return [self.rng.choice(self.siblings) for _ in range(half)] + super().retain_pairs(count - half)

    def __call__(self, features: list[dict]) -> dict:
        batch = super().__call__([{"input_ids": f["input_ids"], "labels": f["labels"]} for f in features])
        if "true_input_ids" in features[0]:
            batch["true"] = self.pad([{"input_ids": f["true_input_ids"], "labels": f["true_labels"]}
                                      for f in features])
        return batch


class AntiSampleTrainer(UnlearningTrainer):
    """Drop-in for `SFTTrainer`: `train_dataset` holds the forget records, `retain_dataset` what must stay.

    Targeted mode: forget records that list `siblings` (single subject->relation associations) need those siblings
    among the retain records, so that training on them keeps them."""

    _name = "UnSTAR"
    config_class = AntiSampleConfig

    def __init__(self, model, args: AntiSampleConfig | None = None, train_dataset=None, retain_dataset=None,
                 processing_class=None, peft_config=None, callbacks=None, **kwargs):
        args = args or AntiSampleConfig(output_dir="unstar-output")
        self.forget_records = [dict(record) for record in train_dataset]
        if any(record.get("siblings") for record in self.forget_records):  # targeted mode
            _check_targeted(self.forget_records, retain_dataset)
        self.needs_reference = args.reversed_loss_weight > 0 and args.reversed_loss_type == "npo"
        # SFTTrainer inspects a non-empty train_dataset at init; each round replaces it with the anti-samples.
        super().__init__(model, args, train_dataset=self.forget_records, retain_dataset=retain_dataset,
                         processing_class=processing_class, peft_config=peft_config, callbacks=callbacks, **kwargs)
        sibling_ids = {sibling for record in self.forget_records for sibling in record.get("siblings") or []}
        siblings = [self.tokenize(self.answer_pair(record)) for record in (retain_dataset or [])
                    if record["id"] in sibling_ids]
        self.data_collator = AntiSampleCollator(self.data_collator.pad_token_id, self.data_collator.retain, args.seed,
                                                siblings)
        self.anti_samples: list[AntiSample] = []
        self.rounds: list[dict] = []
        self.steps = 0
        self._generator = None
        # A round, not a Trainer step, is what UnSTAR resumes from: each round is its own Trainer.train(), whose
        # step count starts at 0, so the Trainer's own checkpoints could not be resumed across rounds.
        self.save_rounds = self.args.save_strategy != IntervalStrategy.NO
        self.args.save_strategy = IntervalStrategy.NO

    # ---- the rounds -------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Rounds of probe -> generate -> filter -> fit, until the forget facts are gone or `max_rounds`.
        `resume_from_checkpoint`: a round checkpoint folder, a folder of them (the latest is taken) or True (the
        latest under output_dir); the run goes on from the round after it as if it had never stopped."""
        output = None
        if resume_from_checkpoint:
            self.load_round_checkpoint(latest_round_checkpoint(
                self.args.output_dir if resume_from_checkpoint is True else resume_from_checkpoint))
        for round_index in range(len(self.rounds), self.args.max_rounds + 1):
            known, asked = self.still_known()
            facts_known = len({record["id"] for record in known})
            log = {"round": round_index, "facts": len(self.forget_records), "known": facts_known,
                   "forget_acc": facts_known / max(1, len(self.forget_records)), "questions_asked": asked,
                   "questions_answered": len(known), "made": 0, "kept": 0, "dropped": {}, "steps": 0}
            if log["forget_acc"] <= self.args.forget_acc_target or round_index == self.args.max_rounds:
                self.rounds.append(log)  # the final probe: nothing left to fit, or no round left
                break
            made = self.generator.generate(known, round_index)
            kept, dropped = filter_anti_samples(made, known)
            kept, changed = self.keep_same_answer(kept, known)
            self.anti_samples.extend(kept)
            log.update(made=len(made), kept=len(kept),
                       dropped={**{reason: sum(r == reason for _, r in dropped) for reason in DROP_REASONS},
                                "changed_answer": changed})
            output = self.fit(round_index)
            log["steps"] = output.global_step
            self.rounds.append(log)
            self.save_audit()
            if self.save_rounds:
                self.save_round_checkpoint()
        self.save_audit()
        return output

    def still_known(self) -> tuple[list[dict], int]:
        """Records (one per question still answered) over each fact's question, trained paraphrases (never the
        held-out one) and, for facts whose question is forgotten, harder follow-up questions."""
        paraphrased = [{**record, "question": question} for record in self.forget_records
                       for question in record.get("paraphrased_questions", [])[1:]]
        questions = self.forget_records + paraphrased
        verdicts = self._probe(questions)
        if self.args.follow_ups:
            forgotten = [r for r, known in zip(self.forget_records, verdicts) if not known]
            follow_ups = follow_up_questions(forgotten, self.forget_records, per_record=self.args.follow_ups,
                                             seed=self.args.seed + len(self.rounds))
            questions = questions + follow_ups
            verdicts = verdicts + self._probe(follow_ups)
        return [q for q, known in zip(questions, verdicts) if known], len(questions)

    def keep_same_answer(self, samples: list[AntiSample], known: list[dict]) -> tuple[list[AntiSample], int]:
        """Keep anti-samples whose question the model still answers with the true answer: a paraphrase that asks
        something else (another relation, say) would teach a wrong answer to a fact that must stay."""
        answers = {record["id"]: record["answer"] for record in known}
        asked = list(dict.fromkeys((sample.source_id, sample.question) for sample in samples))
        verdicts = self._probe([{"id": i, "question": q, "answer": answers[i]} for i, q in asked])
        same = {pair for pair, known in zip(asked, verdicts) if known}
        kept = [sample for sample in samples if (sample.source_id, sample.question) in same]
        return kept, len(samples) - len(kept)

    def _probe(self, records: list[dict]) -> list[bool]:
        if not records:
            return []
        verdicts = probe(self.model, self._tokenizer, records, prompt_template=self.prompt_template,
                         batch_size=self.args.generation_batch_size)
        return [verdict.known for verdict in verdicts]

    def fit(self, round_index: int):
        """One `Trainer.train()` over every anti-sample kept so far; fresh optimizer, steps counted on."""
        self.train_dataset = Dataset.from_list([self.anti_sample_features(sample) for sample in self.anti_samples])
        self.optimizer, self.lr_scheduler = None, None
        output = super().train()
        for entry in self.history_callback.history:
            entry.setdefault("round", round_index)
            entry.setdefault("total_step", self.steps + entry["step"])
        self.steps += output.global_step
        return output

    # ---- data and loss ----------------------------------------------------------------------------------------
    def anti_sample_features(self, sample: AntiSample) -> dict:
        features = self.tokenize({"prompt": self.prompt(sample.question), "completion": sample.completion})
        if self.args.reversed_loss_weight > 0:
            record = next(r for r in self.forget_records if r["id"] == sample.source_id)
            true = self.tokenize(self.answer_pair({**record, "question": sample.question}))
            features.update(true_input_ids=true["input_ids"], true_labels=true["labels"])
        return features

    def forget_loss(self, model, inputs):
        """NLL of the anti-samples, plus the reversed term on the true answers when it is weighted."""
        loss = self.log_metric("anti_sample_nll", nll(self.logits(model, inputs), inputs["labels"]))
        if self.args.reversed_loss_weight > 0:
            true = self._current_true
            log_prob, count = sequence_log_probs(self.logits(model, true), true["labels"])
            self.log_metric("forget_nll", (-log_prob / count.clamp(min=1)).mean())
            if self.args.reversed_loss_type == "npo":
                ref_log_prob, _ = sequence_log_probs(self.reference_logits(true), true["labels"])
                reversed_term = npo_loss(log_prob, ref_log_prob, self.args.npo_beta)
            else:
                reversed_term = (log_prob / count.clamp(min=1)).mean()
            loss = loss + self.args.reversed_loss_weight * self.log_metric("reversed_loss", reversed_term)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        self._current_true = inputs.pop("true", None)
        return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)

    # ---- outputs ----------------------------------------------------------------------------------------------
    @property
    def generator(self):
        """The anti-sample writer named by `args.generator`, built once."""
        if self._generator is None:
            knobs = dict(n_paraphrases=self.args.n_paraphrases, n_wrong_answers=self.args.n_wrong_answers,
                         with_rationale=self.args.with_rationale, seed=self.args.seed)
            sampling = dict(temperature=self.args.generation_temperature, top_p=self.args.generation_top_p,
                            batch_size=self.args.generation_batch_size)
            if self.args.generator == "template":
                self._generator = TemplateGenerator(**knobs)
            elif self.args.generator == "self":
                prompts = load_skill_prompts(self.model.config._name_or_path, self._tokenizer)
                self._generator = SelfTaughtGenerator(self.model, self._tokenizer, prompts, **knobs, **sampling)
            elif Path(self.args.generator).is_dir():
                self._generator = teacher_generator(self.args.generator, **knobs, **sampling)
            else:
                raise ValueError(f"generator must be 'self', 'template' or a model folder, got {self.args.generator!r}")
        return self._generator

    def save_audit(self, output_dir: str | Path | None = None) -> None:
        """Write every kept anti-sample and the per-round log (atomically) to `output_dir` (default: args')."""
        output_dir = Path(output_dir or self.args.output_dir)
        write_anti_samples(output_dir / ANTI_SAMPLES_FILE, self.anti_samples)
        write_jsonl(output_dir / ROUNDS_FILE, self.rounds)

    # ---- round checkpoints ------------------------------------------------------------------------------------
    def save_round_checkpoint(self) -> Path:
        """Write output_dir/round-<rounds fitted>, atomically: the weights (or adapter), the anti-samples, the
        round log, the step count and history, and the random states that the next rounds draw from."""
        path = Path(self.args.output_dir) / ROUND_CHECKPOINT.format(len(self.rounds))
        if not self.is_world_process_zero():
            return path
        with atomic_directory(path) as staging:
            self.save_model(str(staging))
            state = {"run": self._run_identity(), "rounds": self.rounds, "steps": self.steps,
                     "history": self.history_callback.history,
                     "anti_samples": [sample.to_json() for sample in self.anti_samples]}
            write_json(staging / STATE_FILE, state)
            torch.save({"collator": self.data_collator.rng.getstate(), "torch": torch.get_rng_state()},
                       staging / RNG_FILE)
        return path

    def load_round_checkpoint(self, path: str | Path) -> None:
        """Restore what `save_round_checkpoint` wrote; refuse a checkpoint of another run."""
        path = Path(path)
        state = json.loads((path / STATE_FILE).read_text())
        for key, ours in self._run_identity().items():
            if state["run"].get(key) != ours:
                raise ValueError(f"{path} is a checkpoint of another run: its {key} is {state['run'].get(key)!r}, "
                                 f"this run's is {ours!r}")
        self._load_from_checkpoint(str(path))
        self.rounds, self.steps = state["rounds"], state["steps"]
        self.history_callback.history[:] = state["history"]
        self.anti_samples = [AntiSample(**row) for row in state["anti_samples"]]
        random_states = torch.load(path / RNG_FILE, weights_only=True)
        self.data_collator.rng.setstate(random_states["collator"])
        torch.set_rng_state(random_states["torch"])

    def _run_identity(self) -> dict:
        """What must match for a checkpoint to be resumed by this run."""
        facts = "\n".join(f"{r['id']}\t{r['question']}\t{r['answer']}" for r in self.forget_records)
        return {"forget_facts": hashlib.sha256(facts.encode()).hexdigest()[:16], "seed": self.args.seed,
                "generator": self.args.generator, "max_rounds": self.args.max_rounds}


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


def _check_targeted(forget: list[dict], retain) -> None:
    """Targeted records must name their siblings, and those must be among the retain records."""
    retain_ids = {record["id"] for record in (retain or [])}
    for record in forget:
        if not record.get("siblings"):
            raise ValueError(f"targeted record {record['id']} lists no siblings")
        missing = [sibling for sibling in record["siblings"] if sibling not in retain_ids]
        if missing:
            raise ValueError(f"targeted record {record['id']}: siblings {missing[:3]} are not in retain_dataset "
                             "(targeted mode keeps them by training on them as retain data)")

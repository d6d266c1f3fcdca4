"""UnSTAR: unlearning with self-taught anti-samples.

Each round probes which forget facts the model still answers, has a generator write anti-samples for them (a
paraphrased question, a wrong answer of the same type and a rationale that never names the true answer), and fits
them with ordinary next-token cross-entropy, optionally with a reversed term on the true answer and a retain term.
The rounds themselves are in `unstar_rounds.py`, their checkpoints in `unstar_checkpoints.py`; this file holds the
configuration, the data of one round and the loss.
"""

from __future__ import annotations

import copy
import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from datasets import Dataset
from transformers import TrainerCallback
from transformers.trainer_utils import IntervalStrategy, SchedulerType, TrainOutput

from ...data import as_records, check_siblings_in
from ...io import UsageError, write_jsonl
from ...text import format_pair
from ..tokens import answer_only
from ..anti_samples import AntiSample, write_anti_samples
from ..generators import check_generator, choose_generator
from ..neighbors import retain_neighbors
from ..strangers import StrangerAnswers, about, asks_about_subject, stranger_names
from .base import UnlearningConfig, UnlearningTrainer
from .collators import AntiSampleCollator, pad_pairs
from .losses import ascent_to_floor, mean_nll, nll, npo_loss, sequence_log_probs
from .unstar_checkpoints import ROUND_CHECKPOINT
from .unstar_rounds import run_rounds

ANTI_SAMPLES_FILE = "anti_samples.jsonl"
DROPPED_FILE = "anti_samples_dropped.jsonl"
ROUNDS_FILE = "rounds.jsonl"
REVERSED_TYPES = ("grad_ascent", "npo", "stranger")
LENGTHLESS_SCHEDULES = ("constant", "constant_with_warmup", "inverse_sqrt")
"""Learning-rate schedules that do not depend on the length of the run."""


@dataclass
class AntiSampleConfig(UnlearningConfig):
    r"""Configuration of [`AntiSampleTrainer`]. `num_train_epochs` is the number of passes over the anti-samples in
    each round; the loss is NLL(anti-samples) + reversed_loss_weight * reversed term + retain_weight * retain loss.

    Parameters:
        > Rounds

        max_rounds (`int`, defaults to `4`): most probe -> generate -> fit rounds.
        forget_acc_target (`float`, defaults to `0.0`): stop once at most this share of the forget facts is answered.
        follow_ups (`int`, defaults to `2`): harder follow-up questions probed per forgotten fact (written by the
            self-taught or teacher generator, fixed templates for the template generator).
        refit (`str`, defaults to `"replay"`): fit the round's own anti-samples and a replay of earlier ones each
            round ("replay"), every anti-sample kept so far ("all"), or only the round's own ("round", as the
            reference code does).
        replay_ratio (`float`, defaults to `1.0`): with refit "replay", earlier anti-samples replayed per new one.
        restart_optimizer_each_round (`bool`, defaults to `False`): a fresh optimizer and learning-rate schedule
            for each round (warmup and decay restart every round); by default one optimizer and one schedule run
            over all rounds, as one Trainer run would. A schedule that decays (any but "constant",
            "constant_with_warmup" and "inverse_sqrt", or a warmup given as a fraction) then spans `max_steps`,
            which it needs: the rounds' steps are not known before they end.

        > Anti-samples

        generator (`str`, defaults to `"auto"`): "self", "template", a teacher model folder, or "auto" ("self" on a
            model with skill prompts or a chat template, else "template", with a warning).
        n_paraphrases (`int`, defaults to `2`), n_wrong_answers (`int`, defaults to `2`), with_rationale (`bool`).
        retain_neighbors (`bool`, defaults to `False`): half of each retain batch from the retain facts that share a
            forget fact's answer or a wrong answer taught for it, under the same relation (see `neighbors.py`).
        stranger_answers (`bool`, defaults to `False`): each question's wrong answers are what the model answers
            when it is asked about strangers (see `strangers.py`): its own spread of guesses, fresh each round,
            instead of a few planted alternatives.
        generation_batch_size, generation_temperature, generation_top_p: how the generator samples.
        answer_form (`str`, defaults to `"auto"`): before round 0 the model's own whole answers to forget facts it knows
            are read; when most are not the records' answers as written (a preamble line, "The answer is X."), each
            anti-sample is fitted in its own words: its whole answer with the wrong answer in place of the true one,
            the rationale after it (one warning line says so). "records": the records' form anyway (with a warning
            line). See `answer_form.py`.
        writer_check_bar (`float`, defaults to `0.5`), writer_check_facts (`int`, defaults to `8`): before round 0 a
            writing model (self or teacher) writes anti-samples for this many facts the model knows, and its shares
            of usable wrong answers and rationales must reach the bar (of paraphrases, half of it); below it the
            template generator takes over (with a warning) or the run is refused (see `writer_check.py`); 0: no check.

        > Loss

        reversed_loss_weight (`float`, defaults to `0.0`), reversed_loss_type (`"grad_ascent"`, `"npo"` or
            `"stranger"`), npo_beta: a term that pushes the true answer down (0: the paper's UnSTAR); "stranger"
            stops pushing at the likelihood the model gave that answer for strangers before unlearning.
    """

    max_rounds: int = field(default=4, metadata={"help": "Most probe -> generate -> fit rounds."})
    max_steps: int = field(
        default=-1, metadata={"help": "Most optimizer steps of the whole run, all rounds together (-1: no limit)."}
    )
    forget_acc_target: float = field(
        default=0.0,
        metadata={"help": "Stop once at most this share of forget facts is still answered (question, trained "
                  "paraphrases or follow-ups)."},
    )
    refit: str = field(
        default="replay",
        metadata={"help": "What each round fits: its own anti-samples plus a 'replay' of earlier ones "
                  "(replay_ratio), 'all' anti-samples kept so far, or only the 'round''s own (as the reference code "
                  "does).", "choices": ["replay", "all", "round"]},
    )
    replay_ratio: float = field(
        default=1.0,
        metadata={"help": "With refit 'replay': earlier anti-samples fitted again per anti-sample of the round, "
                  "spread over their facts, so that what a round costs follows what is left to forget."},
    )
    generator: str = field(
        default="auto",
        metadata={"help": "Who writes anti-samples: 'self' (the model being unlearned), 'template' (offline, from "
                  "the records' fields), a path to a teacher model, or 'auto': 'self' when the model has skill "
                  "prompts or a chat template, else 'template' (with a warning)."},
    )
    n_paraphrases: int = field(default=2, metadata={"help": "Paraphrased questions per known fact and round."})
    n_wrong_answers: int = field(default=2, metadata={"help": "Wrong answers per question."})
    with_rationale: bool = field(default=True, metadata={"help": "Append a misleading rationale to each answer."})
    retain_neighbors: bool = field(
        default=False,
        metadata={"help": "Draw half of each retain batch from the retain facts that share, under the same "
                  "relation, a forget fact's answer or a wrong answer taught for it (see `neighbors.py`), "
                  "as targeted mode does with siblings."},
    )
    stranger_answers: bool = field(
        default=False,
        metadata={"help": "Wrong answers, each question its own, from what the model answers when the question is "
                  "asked about strangers (names it never saw): aim at a model that never met the subject, not at "
                  "a planted answer. Needs records whose question names their `subject`."},
    )
    writer_check_bar: float = field(
        default=0.5,
        metadata={"help": "Least share of usable wrong answers and rationales (paraphrases: half of it) a writing "
                  "model (self or teacher) must write before round 0; below it the template generator takes over "
                  "with a warning, else the run is refused (0: no check)."},
    )
    writer_check_facts: int = field(
        default=8, metadata={"help": "Known facts (retain first) the writer check has the writer write for."}
    )
    follow_ups: int = field(
        default=2, metadata={"help": "Harder follow-up questions probed per forgotten fact (0: none)."}
    )
    answer_form: str = field(
        default="auto",
        metadata={"help": "'auto': said as the model says answers; 'records': as written",
                  "choices": ["auto", "records"]},
    )
    restart_optimizer_each_round: bool = field(
        default=False,
        metadata={"help": "A fresh optimizer and learning-rate schedule (warmup and decay) for each round; default: "
                  "one optimizer and one schedule over the whole run (a decaying schedule then spans max_steps)."},
    )
    generation_batch_size: int = field(default=64, metadata={"help": "Prompts per batch when generating/probing."})
    generation_temperature: float = field(default=1.0, metadata={"help": "Sampling temperature of the generator."})
    generation_top_p: float = field(default=0.95, metadata={"help": "Nucleus sampling of the generator."})
    reversed_loss_weight: float = field(
        default=0.0, metadata={"help": "Weight of the reversed term on the true answer (0: the paper's UnSTAR)."}
    )
    reversed_loss_type: str = field(
        default="grad_ascent",
        metadata={"help": "Reversed term: 'grad_ascent' (minus NLL), 'npo', or 'stranger' (minus NLL, down to the "
                  "mean token log-likelihood the model gave the true answer for strangers before unlearning, not "
                  "below).", "choices": REVERSED_TYPES},
    )
    npo_beta: float = field(default=0.1, metadata={"help": "Inverse temperature of the NPO reversed term."})
    # Defaults that differ from UnlearningConfig
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the anti-samples per round."})
    learning_rate: float = field(default=1e-3, metadata={"help": "The initial learning rate for AdamW."})

    def __post_init__(self):
        super().__post_init__()
        if self.reversed_loss_type not in REVERSED_TYPES:
            raise ValueError(f"reversed_loss_type must be one of {', '.join(REVERSED_TYPES)}, got "
                             f"{self.reversed_loss_type!r}")
        bounds = {"max_rounds": (1, None), "forget_acc_target": (0.0, 1.0), "n_paraphrases": (0, None),
                  "n_wrong_answers": (1, None), "follow_ups": (0, None), "generation_batch_size": (1, None),
                  "reversed_loss_weight": (0.0, None), "replay_ratio": (0.0, None),
                  "writer_check_bar": (0.0, 1.0), "writer_check_facts": (1, None)}
        for name, (low, high) in bounds.items():
            value = getattr(self, name)
            if value < low or (high is not None and value > high):
                within = f"between {low} and {high}" if high is not None else f"at least {low}"
                raise ValueError(f"{name} must be {within}, got {value}")
        for name in ("generation_temperature", "generation_top_p", "npo_beta"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.generation_top_p > 1:
            raise ValueError(f"generation_top_p must be at most 1, got {self.generation_top_p}")
        if self.answer_form not in ("auto", "records"):
            raise ValueError(f"answer_form must be 'auto' or 'records', got {self.answer_form!r}")
        if self.refit not in ("all", "round", "replay"):
            raise ValueError(f"refit must be 'all', 'round' or 'replay', got {self.refit!r}")
        needs_length = self.lr_scheduler_type not in LENGTHLESS_SCHEDULES or 0 < self.warmup_steps < 1
        if needs_length and self.max_steps <= 0 and not self.restart_optimizer_each_round:
            raise ValueError(f"lr_scheduler_type {SchedulerType(self.lr_scheduler_type).value!r} (warmup_steps "
                             f"{self.warmup_steps}) spans the run's steps, which UnSTAR's rounds do not know before "
                             "they end: give max_steps (the budget of all rounds together), a constant schedule, or "
                             "restart_optimizer_each_round true (a schedule per round)")
        check_generator(self.generator)


class AntiSampleTrainer(UnlearningTrainer):
    """Drop-in for `SFTTrainer`: `train_dataset` holds the forget records, `retain_dataset` what must stay.

    Targeted mode: forget records that list `siblings` (single subject->relation associations) need those siblings
    among the retain records, so that training on them keeps them."""

    _name = "UnSTAR"
    config_class = AntiSampleConfig
    fits_records_answers = False  # the rounds read the model's form and fit anti-samples in it (answer_form)
    fixed_retain_rows = False  # retain answers rewritten as the model says them, neighbours drawn: a KL term's copy
    output_dir_entries = (*UnlearningTrainer.output_dir_entries, ROUND_CHECKPOINT.format("*"), ANTI_SAMPLES_FILE,
                          DROPPED_FILE, ROUNDS_FILE)

    def __init__(self, model, args: AntiSampleConfig | None = None, train_dataset=None, retain_dataset=None,
                 processing_class=None, peft_config=None, callbacks=None, **kwargs):
        args = copy.copy(args) if args is not None else AntiSampleConfig(output_dir="unstar-output")  # ours to set
        self.forget_records = as_records(train_dataset, "train_dataset") if train_dataset is not None else []
        retain_records = as_records(retain_dataset if retain_dataset is not None else [], "retain_dataset")
        if any(record.get("siblings") for record in self.forget_records):  # targeted mode
            check_siblings_in(self.forget_records, retain_records, "retain_dataset")
        self.needs_reference = args.reversed_loss_weight > 0 and args.reversed_loss_type == "npo"
        # SFTTrainer inspects a non-empty train_dataset at init; each round replaces it with the anti-samples.
        super().__init__(model, args, train_dataset=self.forget_records, retain_dataset=retain_records,
                         processing_class=processing_class, peft_config=peft_config, callbacks=callbacks, **kwargs)
        sibling_ids = {sibling for record in self.forget_records for sibling in record.get("siblings") or []}
        siblings = [self.tokenize(self.answer_pair(record)) for record in retain_records
                    if record["id"] in sibling_ids]
        self.retain_records = retain_records
        self.retain_answers: list[str] | None = None
        """The retain records' answers as the model says them, where it has a form of its own (`say_retain_answers`)."""
        self.collator = AntiSampleCollator(self.data_collator.pad_token_id, self.data_collator.retain, args.seed,
                                           siblings)
        """The batches' collator (also when something wraps `data_collator`): `fit` hands it the round's neighbours."""
        self.data_collator = self.collator
        self.generator_choice = choose_generator(args.generator, self.model.config._name_or_path, self._tokenizer)
        """Who writes the anti-samples (`args.generator` with "auto" resolved) and why "auto" fell back, if it did."""
        if self.generator_choice.why:
            self.warn(self.generator_choice.why)
        floored = args.reversed_loss_weight > 0 and args.reversed_loss_type == "stranger"
        names = self.strangers(retain_records) if args.stranger_answers or floored else []
        self.stranger_answers = StrangerAnswers(
            self.model, self._tokenizer, self.prompt_template, names, seed=args.seed,
            batch_size=args.generation_batch_size) if args.stranger_answers else None
        """Where the generator takes each question's wrong answers from (None: its own way)."""
        self.floors = self.stranger_floors(names) if floored else {}
        """Each forget fact's floor for the "stranger" reversed term (see `stranger_floors`)."""
        self.writer_check: dict | None = None
        """The writer check's shares, bar and outcome (see `writer_check.py`); None before it runs or without one."""
        self.anti_samples: list[AntiSample] = []
        """Every anti-sample kept so far, in the order the rounds made them."""
        self.dropped: list[tuple[AntiSample, str]] = []
        """Every anti-sample the filters dropped, with its reason (`anti_samples.DROP_REASONS`, or
        `unstar_rounds.ROUND_DROP_REASONS`)."""
        self.rounds: list[dict] = []
        """One log per round: facts still known, anti-samples made, kept and dropped (by reason), steps."""
        # A round, not a Trainer step, is what UnSTAR resumes from: the anti-samples of the next round depend on
        # the probe after this one, which the Trainer's own checkpoints do not hold (`args` is this trainer's copy).
        self.round_save_strategy = IntervalStrategy(self.args.save_strategy)
        """The save_strategy asked for: whether rounds end with a round checkpoint (`round_checkpoint_due`)."""
        self.args.save_strategy = IntervalStrategy.NO
        self.resume_optimizer_from: Path | None = None
        """The round checkpoint whose optimizer and schedule the next round's `train()` loads (set by a resume)."""
        self.run_max_steps = self.args.max_steps
        """The step budget of the whole run (`fit` sets `args.max_steps` to each round's share of it)."""
        self.run_epochs = RunEpochs()
        self.add_callback(self.run_epochs)

    def say_retain_answers(self, answers: list[str]) -> None:
        """Fit the retain records' answers as `answers` (one per record: as the model says them, `answer_form.py`):
        the retain pairs and siblings the collator draws."""
        self.retain_answers = answers
        pairs = [self.tokenize(self.answer_pair(record, answer))
                 for record, answer in zip(self.retain_records, answers)]
        if self.collator.retain:
            self.collator.retain = pairs
        sibling_ids = {sibling for record in self.forget_records for sibling in record.get("siblings") or []}
        self.collator.siblings = [pair for record, pair in zip(self.retain_records, pairs)
                                  if record["id"] in sibling_ids]

    def strangers(self, retain_records: list[dict]) -> list[str]:
        """The stranger names of this run (`strangers.stranger_names`); a UsageError when there are none or a forget
        question does not name its subject, or when the template generator would write the anti-samples."""
        if self.args.stranger_answers and self.generator_choice.kind == "template":
            raise UsageError("stranger_answers: the template generator writes its wrong answers from the records; "
                             "use generator self (or a teacher model folder) with it")
        lacking = next((record["id"] for record in self.forget_records if not asks_about_subject(record)), None)
        if lacking is not None:
            raise UsageError(f"forget record {lacking}: its question does not name its subject, so it cannot be asked "
                             "about a stranger (stranger_answers, reversed_loss_type stranger)")
        names = stranger_names(self.forget_records, retain_records, seed=self.args.seed)
        if not names:
            raise UsageError("no stranger names: they are made of the words of the retain subjects' names (two words "
                             "or more), which these retain records do not have")
        return names

    @torch.no_grad()
    def stranger_floors(self, names: list[str]) -> dict[str, float]:
        """{forget fact id: the mean token log-likelihood of its answer when its question is asked about each of the
        strangers `names`}, under the model as it is (before unlearning): how likely the answer is for someone the
        model never met."""
        pairs = [(record["id"], self.answer_tokens(about(record, name)))
                 for record in self.forget_records for name in names]
        size, sums = self.args.generation_batch_size, {}
        for start in range(0, len(pairs), size):
            batch = {key: value.to(self.model.device) for key, value in pad_pairs(
                [features for _, features in pairs[start : start + size]], self._tokenizer.pad_token_id).items()}
            log_prob, count = sequence_log_probs(self.logits(self.model, batch), batch["labels"])
            for (fact, _), mean in zip(pairs[start : start + size], (log_prob / count).tolist()):
                sums[fact] = sums.get(fact, 0.0) + mean / len(names)
        return sums

    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs) -> TrainOutput:
        """Rounds of probe -> generate -> filter -> fit, until the forget facts are gone or `max_rounds` (see
        `unstar_rounds.run_rounds`); one run: its step counter, `state.log_history` and the returned TrainOutput
        cover every round. `resume_from_checkpoint`: a round checkpoint folder, a folder of them (the latest is
        taken) or True (the latest under output_dir); the run goes on from the round after it as if it had never
        stopped."""
        return run_rounds(self, resume_from_checkpoint)

    def fit(self, round_index: int) -> TrainOutput:
        """One `Trainer.train()` over the round's `fitted_samples`, within what is left of `max_steps` (the budget of
        the whole run, all rounds together), with the run's optimizer and schedule (fresh ones with
        `restart_optimizer_each_round`); its steps and epochs go on from the run's (see `_init_training_state`)."""
        with self.time_split("fit"):
            samples = self.fitted_samples(round_index)
            if self.args.retain_neighbors and self.collator.retain:
                self.collator.near = [self.collator.retain[index] for index in retain_neighbors(
                    self.forget_records, self.retain_records, self.wrong_answers())]
            self.train_dataset = Dataset.from_list([self.anti_sample_features(sample) for sample in samples])
            if self.args.restart_optimizer_each_round:
                self.optimizer, self.lr_scheduler = None, None
            budget = self.run_max_steps
            if budget > 0:
                per_epoch = max(len(self.get_train_dataloader()) // self.args.gradient_accumulation_steps, 1)
                self.args.max_steps = min(per_epoch * math.ceil(self.args.num_train_epochs),
                                          budget - self.state.global_step)
            try:
                return super().train()
            finally:
                self.args.max_steps = budget

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """The Trainer's schedule over `num_training_steps` (a round's) with `restart_optimizer_each_round`; else one
        schedule over the run's `max_steps`, created once and kept by the Trainer across rounds (it drops a
        schedule it created itself at each `train()`). After a resume, the optimizer's and schedule's states come
        from the round checkpoint (`resume_optimizer_from`)."""
        if self.args.restart_optimizer_each_round:
            return super().create_scheduler(num_training_steps, optimizer)
        created = self.lr_scheduler is None
        super().create_scheduler(max(self.run_max_steps, num_training_steps), optimizer)
        self._created_lr_scheduler = False
        if created and self.resume_optimizer_from is not None:
            self._load_optimizer_and_scheduler(str(self.resume_optimizer_from))
            self.resume_optimizer_from = None
        return self.lr_scheduler

    def wrong_answers(self) -> dict[str, set[str]]:
        """{forget fact id: the wrong answers taught for it so far}."""
        wrong: dict[str, set[str]] = {}
        for sample in self.anti_samples:
            wrong.setdefault(sample.source_id, set()).add(sample.wrong_answer)
        return wrong

    def fitted_samples(self, round_index: int) -> list[AntiSample]:
        """What a round fits: every anti-sample kept so far (`refit` "all"), the round's own ("round"), or the
        round's own and `replay_ratio` times as many earlier ones ("replay"; fewer when there are not so many)."""
        new = [sample for sample in self.anti_samples if sample.round == round_index]
        if self.args.refit == "all":
            return list(self.anti_samples)
        if self.args.refit == "round":
            return new
        earlier = [sample for sample in self.anti_samples if sample.round < round_index]
        rng = random.Random(f"{self.args.seed}:replay:{round_index}")
        return new + spread_over_facts(earlier, round(self.args.replay_ratio * len(new)), rng)

    def _init_training_state(self, max_steps, *args, **kwargs):
        """The Trainer starts each `train()` from a new state; a round goes on from the run's instead: the same
        global step (so TensorBoard/W&B get one increasing step), epochs (`RunEpochs`), log history, flos and token
        count."""
        run = self.state
        result = super()._init_training_state(max_steps, *args, **kwargs)
        self.state.global_step, self.state.max_steps = run.global_step, run.global_step + max_steps
        self.state.log_history, self.state.total_flos = run.log_history, run.total_flos
        self.state.num_input_tokens_seen = run.num_input_tokens_seen
        self.state.epoch = self.run_epochs.before = run.epoch or 0.0
        return result

    def anti_sample_features(self, sample: AntiSample) -> dict:
        """The tokenized anti-sample, with its question's true answer when the reversed term needs it."""
        features = self.tokenize(format_pair(sample.question, sample.answer_text, self.prompt_template))
        if self.args.reversed_loss_weight > 0:
            record = next(r for r in self.forget_records if r["id"] == sample.source_id)
            true = {**record, "question": sample.question}
            if self.args.reversed_loss_type == "stranger":
                true = self.answer_tokens(true)
                features["true_floor"] = self.floors[sample.source_id]
            else:
                true = self.tokenize(self.answer_pair(true, said_true(sample, record["answer"])))
            features.update(true_input_ids=true["input_ids"], true_labels=true["labels"])
        return features

    def answer_tokens(self, record: dict) -> dict:
        """The record's tokenized question and answer, with only the answer's tokens labelled (not the end of turn
        after it, which anti-samples with a rationale teach the model not to emit after an answer: a floor on the
        mean over answer and end of turn would be reached through the end of turn alone)."""
        return answer_only(self.tokenize(self.answer_pair(record)), self._tokenizer, self.prompt_template is None)

    def forget_loss(self, model, inputs, logits):
        """NLL of the anti-samples, plus the reversed term on their questions' true answers (`inputs["true"]`) when
        it is weighted."""
        loss = self.log_metric("anti_sample_nll", nll(logits, inputs["labels"]))
        if self.args.reversed_loss_weight > 0:
            true = inputs["true"]
            log_prob, count = sequence_log_probs(self.logits(model, true), true["labels"])
            self.log_metric("forget_nll", mean_nll(log_prob, count))
            if self.args.reversed_loss_type == "npo":
                ref_log_prob, _ = sequence_log_probs(self.reference_logits(true), true["labels"])
                reversed_term = npo_loss(log_prob, ref_log_prob, self.args.npo_beta)
            elif self.args.reversed_loss_type == "stranger":
                reversed_term = ascent_to_floor(log_prob, count, true["floor"])
            else:
                reversed_term = -mean_nll(log_prob, count)
            loss = loss + self.args.reversed_loss_weight * self.log_metric("reversed_loss", reversed_term)
        return loss

    def save_audit(self, output_dir: str | Path | None = None) -> None:
        """Write every kept anti-sample, every dropped one with its reason and the per-round log (atomically) to
        `output_dir` (default: args')."""
        output_dir = Path(output_dir or self.args.output_dir)
        write_anti_samples(output_dir / ANTI_SAMPLES_FILE, self.anti_samples)
        write_jsonl(output_dir / DROPPED_FILE, ({**sample.to_json(), "reason": reason}
                                                for sample, reason in self.dropped))
        write_jsonl(output_dir / ROUNDS_FILE, self.rounds)


class RunEpochs(TrainerCallback):
    """Counts epochs over the whole run: the Trainer sets `state.epoch` within the round's `train()` at each step;
    this adds the epochs of the rounds `before` it (set by `_init_training_state`)."""

    def __init__(self):
        self.before = 0.0

    def on_step_end(self, args, state, control, **kwargs):
        state.epoch += self.before


def said_true(sample: AntiSample, answer: str) -> str:
    """The true `answer` as the anti-sample's form says it: its `spoken` text with the true answer back in place of the
    wrong one (the reversed term then pushes down what the model says); the answer itself without one."""
    if not sample.spoken:
        return answer
    pattern = re.compile(rf"(?<![A-Za-z0-9]){re.escape(sample.wrong_answer)}(?![A-Za-z0-9])", re.IGNORECASE)
    return pattern.sub(lambda _: answer, sample.spoken)


def spread_over_facts(samples: list[AntiSample], count: int, rng: random.Random) -> list[AntiSample]:
    """`count` of `samples` (all when there are fewer), drawn as evenly over their facts as they go: one of each fact
    in a random order, then a second of each, and so on."""
    by_fact: dict[str, list[AntiSample]] = {}
    for sample in samples:
        by_fact.setdefault(sample.source_id, []).append(sample)
    queues = list(by_fact.values())
    rng.shuffle(queues)
    for queue in queues:
        rng.shuffle(queue)
    spread = [queue[depth] for depth in range(max(map(len, queues), default=0)) for queue in queues
              if depth < len(queue)]
    return spread[:count]

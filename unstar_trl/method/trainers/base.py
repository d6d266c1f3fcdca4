"""`UnlearningTrainer`: TRL's `SFTTrainer` reshaped for unlearning.

It takes forget records as `train_dataset` and, optionally, retain records; turns each into a (prompt, completion)
pair in the model's prompt format; pairs every forget batch with a retain batch drawn by its own collator; keeps a
frozen reference where a method needs one; logs every loss term through `self._metrics`; and stops a diverging run
before its next update. A method is a small subclass that overrides `forget_loss` (and, if it must,
`retain_loss` or `forget_pairs`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from datasets import Dataset
from peft import PeftModel
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, IntervalStrategy, get_last_checkpoint
from transformers.utils import logging
from trl import SFTConfig, SFTTrainer
from trl.trainer.utils import use_adapter

from ...data import as_records
from ...io import UsageError, write_json
from ...models import load_model, load_tokenizer
from ...text import AUTO, check_prompt_template, format_pair, resolve_prompt_template
from ..answer_form import form_message, measure_answer_form
from ..tokens import tokenize_pair
from .collators import COMPANION_LOGITS, REFERENCE_COLUMN, ROW_COLUMN, ForgetRetainCollator
from .divergence import DivergenceError, divergence
from .forget_stop import ForgetStop
from .losses import entropy_share, kl_to_reference, nll
from .reference import precomputed_reference, prepare_reference, reference_copy, whole_model_here
from .reference_table import ReferenceTable, prefer_table
from .time_split import TimeSplit

logger = logging.get_logger(__name__)


@dataclass
class UnlearningConfig(SFTConfig):
    r"""Configuration of [`UnlearningTrainer`]: `SFTConfig` plus the unlearning fields, with CPU-friendly defaults
    (fp32, no activation checkpointing, no reporting, logging every step, no checkpoints, constant learning rate).
    Building it refuses a number that is NaN or infinite, a learning rate that is not above 0, a batch size or
    accumulation below 1 and a negative loss weight (see `check_numbers`).

    Parameters:
        > Prompt format

        prompt_template (`str` or `None`, *optional*, defaults to `"auto"`):
            Prompt with a `{question}` slot, the answer after one space; None or "chat": the tokenizer's chat template;
            "auto": the format the model folder records, else its chat template if it has one, else
            `"Question: {question}\nAnswer:"`. Training, probing and anti-sample writing all use it.

        > Loss

        forget_weight (`float`, defaults to `1.0`): gamma, the weight of the forget term.
        retain_weight (`float`, defaults to `1.0`): alpha, the weight of the retain term (0 disables it).
        retain_loss_type (`str`, defaults to `"nll"`): "nll" of the retain answers or "kl" to the frozen reference.
        ref_adapter_name (`str` or `None`, defaults to `None`): with a `PeftModel` that already carries a trained
            adapter, the name of the adapter that serves as the frozen reference (as in TRL's DPO: load the same
            adapter a second time under this name). Without it such a model is refused by the methods that need a
            reference: the adapter-disabled model never knew what the adapter learned.

        > Stopping

        stop_forget_acc (`float` or `None`, defaults to `None`): stop at the first probe of the forget questions (every
            `forget_probe_every` steps) that reads at most this accuracy; the schedule stays the budget.
        max_forget_nll (`float` or `None`, defaults to `30.0`): stop when the forget answers' mean token NLL exceeds it.
        max_entropy_share (`float` or `None`, defaults to `0.95`): stop when the output collapses to uniform.
    """

    prompt_template: str | None = field(
        default=AUTO,
        metadata={"help": "Prompt with a `{question}` slot; the completion is ' ' + answer + eos. 'chat' (or None): "
                  "the tokenizer's chat template (completion: the answer as the assistant's turn, closed by the "
                  "template's end of turn, as SFTTrainer trains conversational rows). 'auto': the model folder's "
                  "recorded format, else its chat template if it has one, else 'Question: {question}\\nAnswer:'."},
    )
    forget_weight: float = field(default=1.0, metadata={"help": "Weight of the forget loss (gamma)."})
    retain_weight: float = field(
        default=1.0, metadata={"help": "Weight of the retain loss (alpha); 0 disables it. Needs retain records."}
    )
    retain_loss_type: str = field(
        default="nll",
        metadata={"help": "'nll' of the retain answers, or 'kl' to the frozen reference.",
                  "choices": ["nll", "kl"]},
    )
    ref_adapter_name: str | None = field(
        default=None,
        metadata={"help": "With a PeftModel that already carries a trained adapter: the name of a copy of it loaded "
                  "as the frozen reference (model.load_adapter(path, adapter_name=NAME)), as in TRL's DPO. Methods "
                  "that need a reference refuse such a model without it."},
    )
    stop_forget_acc: float | None = field(
        default=None,
        metadata={"help": "Stop at the first probe of the forget questions (every forget_probe_every steps) that "
                  "reads at most this accuracy; None: train the whole schedule (max_steps or epochs, the budget)."},
    )
    forget_probe_every: int = field(default=2, metadata={"help": "Optimizer steps between stop_forget_acc probes."})
    max_forget_nll: float | None = field(
        default=30.0,
        metadata={"help": "Divergence bound: stop when the mean token NLL of the forget answers exceeds it "
                  "(NaN/inf losses always stop). None: no bound."},
    )
    max_entropy_share: float | None = field(
        default=0.95,
        metadata={"help": "Divergence bound: stop when the mean predictive entropy on the forget answers reaches "
                  "this share of its maximum, ln(vocabulary size), i.e. the output has collapsed to uniform. "
                  "None: no bound."},
    )

    # Defaults that differ from SFTConfig
    learning_rate: float = field(default=5e-4, metadata={"help": "The initial learning rate for AdamW."})
    num_train_epochs: float = field(default=5.0, metadata={"help": "Passes over the forget set."})
    per_device_train_batch_size: int = field(default=8, metadata={"help": "Forget (and retain) examples per batch."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "The scheduler type to use."})
    logging_steps: float = field(default=1, metadata={"help": "Log (and record the history) every N steps."})
    save_strategy: str = field(default="no", metadata={"help": "Checkpoints; the CLI saves the final model itself."})
    report_to: None | str | list[str] = field(default="none", metadata={"help": "Integrations to report to."})
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing (off unless either is set)."}
    )
    bf16: bool | None = field(default=False, metadata={"help": "bf16 mixed precision (off: slow on a CPU)."})
    max_length: int | None = field(default=256, metadata={"help": "Truncate prompt + completion to this length."})
    remove_unused_columns: bool = field(
        default=False, metadata={"help": "Keep every dataset column: the collator picks what it needs."}
    )

    def __post_init__(self):
        check_numbers(self)
        super().__post_init__()
        if self.eval_strategy != "no":
            raise ValueError(f"eval_strategy '{IntervalStrategy(self.eval_strategy).value}': unlearning trainers "
                             "evaluate no loss during training (leave it 'no'); measure the model with the unstar_* "
                             "tasks")
        choices = next(item for item in dataclasses.fields(self) if item.name == "retain_loss_type").metadata["choices"]
        if self.retain_loss_type not in choices:
            raise ValueError(f"retain_loss_type must be one of {', '.join(map(repr, choices))}, got "
                             f"{self.retain_loss_type!r}")
        if self.remove_unused_columns:
            raise ValueError("remove_unused_columns true: the unlearning collators read columns the model's forward "
                             "does not take (the reference's figures, each row's index, companion answers); leave it "
                             "false")
        if self.stop_forget_acc is not None and not 0 <= self.stop_forget_acc <= 1:
            raise ValueError(f"stop_forget_acc must be between 0 and 1, got {self.stop_forget_acc}")
        if self.forget_probe_every < 1:
            raise ValueError(f"forget_probe_every must be at least 1, got {self.forget_probe_every}")
        check_prompt_template(self.prompt_template)
        if self.max_steps <= 0 and self.num_train_epochs <= 0:
            raise ValueError(f"num_train_epochs is {self.num_train_epochs} and max_steps {self.max_steps}: nothing "
                             "would be trained; give a positive num_train_epochs or max_steps")
        self.dataset_kwargs = {**(self.dataset_kwargs or {}), "skip_prepare_dataset": True}


NUMBER_RULES = {
    "learning_rate": (lambda value: value > 0, "above 0"),
    "per_device_train_batch_size": (lambda value: value >= 1, "at least 1"),
    "gradient_accumulation_steps": (lambda value: value >= 1, "at least 1"),
    "forget_weight": (lambda value: value >= 0, "at least 0 (0 turns the term off)"),
    "retain_weight": (lambda value: value >= 0, "at least 0 (0 turns the term off)"),
    "max_forget_nll": (lambda value: value is None or value > 0, "above 0, or None"),
    "max_entropy_share": (lambda value: value is None or 0 < value <= 1, "above 0 and at most 1, or None"),
}
"""What each number of UnlearningConfig must be, besides finite. A learning rate of 0 trains nothing and a negative
one learns what it should unlearn; no loss weight may be negative (a negative retain_weight unlearns the retain
set, a negative forget_weight learns the forget set), and there is no exception to that."""
MAY_BE_INFINITE = ("max_forget_nll",)
"""The one number that may be +inf: a divergence bound of infinity is no bound (as None)."""


def check_numbers(config) -> None:
    """Raise ValueError, naming the field, for a float field of `config` that is NaN or infinite (but for
    MAY_BE_INFINITE), or a number that breaks NUMBER_RULES: before anything is loaded or trained."""
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if isinstance(value, float) and not math.isfinite(value) and not (
                value == math.inf and item.name in MAY_BE_INFINITE):
            raise ValueError(f"{item.name} must be a finite number, got {value}")
    for name, (holds, what) in NUMBER_RULES.items():
        if not holds(getattr(config, name)):
            raise ValueError(f"{name} must be {what}, got {getattr(config, name)}")


RUN_FILE = "unstar_run.json"
"""In each checkpoint-<step> the Trainer saves: the identity of the run that saved it (`run_identity`)."""
RETAIN_RNG_FILE = "unstar_retain_rng.json"
"""In each checkpoint-<step>: the state of the retain draws (the collator's `rng`) after that step."""
FORGET_STOP_FILE = "unstar_forget_stop.json"
"""In each checkpoint-<step> of a run with a stopping rule: the rule's state (`ForgetStop.state_dict`)."""
RUN_SETTINGS = ("seed", "learning_rate", "lr_scheduler_type", "weight_decay", "per_device_train_batch_size",
                "gradient_accumulation_steps", "max_length")
"""The TrainingArguments/SFTConfig fields in a run's identity (besides every field the method's config adds)."""


class RunIdentityCallback(TrainerCallback):
    """Writes into every checkpoint the Trainer saves what a resume needs besides the Trainer's own state: the state
    of the retain draws of `trainer` and of its stopping rule and, last, the run's identity, for a resume to check."""

    def __init__(self, identity: dict, trainer: UnlearningTrainer):
        self.identity, self.trainer = identity, trainer

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            checkpoint = Path(args.output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}"
            write_json(checkpoint / RETAIN_RNG_FILE, self.trainer.collator.rng.getstate())
            if self.trainer.forget_stop is not None:
                write_json(checkpoint / FORGET_STOP_FILE, self.trainer.forget_stop.state_dict())
            write_json(checkpoint / RUN_FILE, self.identity)


def require_retain(args: UnlearningConfig, retain_records) -> None:
    """Refuse a weighted retain term without retain records: it would silently vanish (GradDiff would become plain
    gradient ascent)."""
    if args.retain_weight > 0 and (retain_records is None or len(retain_records) == 0):
        raise UsageError(f"retain_weight is {args.retain_weight} but there are no retain records (the retain split is "
                         "empty or missing): the retain term would silently vanish; give retain records or set "
                         "retain_weight 0")


def check_reference_adapter(model: PeftModel, ref_adapter_name: str | None) -> None:
    """Refuse a frozen reference that a `PeftModel` cannot give: its adapter was trained before this run (it may hold
    the very facts to forget), so the adapter-disabled model is no reference unless `ref_adapter_name` names a copy
    of it, which must be one of the model's adapters."""
    adapters = list(model.peft_config)
    if ref_adapter_name is None:
        raise UsageError(f"the model already carries a PEFT adapter ({', '.join(map(repr, adapters))}), which may hold "
                         "the facts to forget: with it disabled the frozen reference would be a model that never "
                         "knew them; load the adapter a second time as the reference (model.load_adapter(PATH, "
                         "adapter_name='reference')) and set ref_adapter_name 'reference' (as TRL's DPO does), or "
                         "merge the adapter into the model first (merge_and_unload)")
    if ref_adapter_name not in adapters:
        raise UsageError(f"ref_adapter_name {ref_adapter_name!r} is not an adapter of the model (it has "
                         f"{', '.join(map(repr, adapters))}); load it with model.load_adapter(PATH, "
                         f"adapter_name={ref_adapter_name!r})")


def records_digest(records) -> str:
    """A short digest of the facts (id, question, answer) of `records`, in order."""
    facts = "\n".join(f"{r['id']}\t{r['question']}\t{r['answer']}" for r in records)
    return hashlib.sha256(facts.encode()).hexdigest()[:16]


def check_run_identity(checkpoint: str | Path, saved: dict, ours: dict) -> None:
    """Refuse to resume from `checkpoint` when the identity it saved differs from this run's, naming the first
    difference."""
    for key, value in ours.items():
        if saved.get(key) != value:
            raise UsageError(f"{checkpoint} is a checkpoint of another run: its {key} is {saved.get(key)!r}, this "
                             f"run's is {value!r}")


def batch_tokens(batch: dict) -> torch.Tensor:
    """Non-padding tokens of a batch and of the batches nested in it, as a float on the batch's device (no sync)."""
    own = batch["attention_mask"].sum().float() if "attention_mask" in batch else torch.zeros(())
    return sum((batch_tokens(part) for part in batch.values() if isinstance(part, dict)), own)


def padded_tokens(batch: dict) -> int:
    """Token positions (padding included) of a batch and of the batches nested in it."""
    own = batch["input_ids"].numel() if "input_ids" in batch else 0
    return own + sum(padded_tokens(part) for part in batch.values() if isinstance(part, dict))


class UnlearningTrainer(SFTTrainer):
    """Base of the unlearning methods. Loss = forget_weight * forget_loss + retain_weight * retain_loss, each a mean
    over the sequences of the micro-batch (so the Trainer scales for gradient accumulation)."""

    _tag_names = ["trl", "unstar-trl", "unlearning"]
    _name = "Unlearning"
    config_class = UnlearningConfig
    needs_reference = False
    """Whether `forget_loss` uses the frozen reference (the KL retain loss asks for it on its own)."""
    reference_on_forget_rows = False
    """Whether `forget_loss` needs the reference only as sequence log-probs of the forget rows (NPO: REFERENCE_COLUMN;
    AltPO: that of its alternates too, see `with_reference_figures`): fixed rows, so they are computed once before
    training (`precomputed_reference`) and, where each process holds the whole model, no reference is held."""
    reference_logits_on_forget_rows = False
    """Whether `forget_loss` needs the reference only as its logits on the forget rows' answers (UNDIAL): a table of
    them, computed once before training, may serve it instead of a copy (see `reference_rows`)."""
    fixed_retain_rows = True
    """Whether the retain term's rows are the retain pairs as tokenized here (UnSTAR rewrites them in the model's
    words during the run): then a KL retain term may be served by a table too."""
    fits_records_answers = True
    """Whether the method trains on the records' answers as written (its forget or retain term): `train` then warns in
    one line when the model says its answers in a form of its own (`answer_form.py`)."""
    output_dir_entries = (f"{PREFIX_CHECKPOINT_DIR}-*", "README.md")
    """What a run writes into `args.output_dir` (glob patterns): the Trainer's checkpoints, TRL's model card."""
    collator_class = ForgetRetainCollator
    """Pads the forget batches (and whatever their pairs carry) and draws the retain pairs."""
    companion_rows: str | None = None
    """The key of the rows each forget pair carries that the forget loss reads too (AltPO's "alternate", DF-MCQ's
    "options"): the model reads them in the forget rows' forward pass, and their logits reach `forget_loss` as
    `inputs[companion_rows][COMPANION_LOGITS]`."""
    loss_is_scaled_for_ga = False

    def __init__(self, model, args: UnlearningConfig | None = None, train_dataset=None, retain_dataset=None,
                 processing_class=None, peft_config=None, callbacks=None, **kwargs):
        args = args or self.config_class(output_dir="unlearning-output")
        source = model if isinstance(model, str) else getattr(model.config, "_name_or_path", None)
        if isinstance(model, str):
            model = load_model(model)[0]
        if kwargs.get("eval_dataset") is not None:
            raise ValueError("eval_dataset: unlearning trainers do not evaluate a loss during training; measure what "
                             "the model still knows with evaluation.knowledge_report or the unstar_* lm-eval tasks")
        if train_dataset is None or len(train_dataset) == 0:
            raise ValueError("train_dataset is empty: give the forget records (question, answer)")
        train_dataset = as_records(train_dataset, "train_dataset")
        retain_dataset = as_records(retain_dataset if retain_dataset is not None else [], "retain_dataset")
        if processing_class is None:
            processing_class = load_tokenizer(model.config._name_or_path)
        if processing_class.pad_token is None:
            processing_class.pad_token = processing_class.eos_token
        self.args = args  # `forget_pairs` and `tokenize` may read the config before `Trainer.__init__` sets it
        self._tokenizer = processing_class
        self.prompt_template = resolve_prompt_template(args.prompt_template, processing_class, source)
        """The run's one prompt format (None: the chat template), resolved from `args.prompt_template`."""
        self.forget_records = [dict(record) for record in train_dataset]
        require_retain(args, retain_dataset)
        uses_retain = args.retain_weight > 0
        self._facts = {"forget_facts": records_digest(self.forget_records),
                       "retain_facts": records_digest(retain_dataset if uses_retain else [])}
        self.warnings: list[str] = []
        """What the run warned about (also logged), for its report."""
        self.time_split = TimeSplit()
        """Where the run's time went: seconds per phase (probe, generate, filter, fit, other)."""
        with self.time_split("generate"):
            self.prepare_forget(model, processing_class)
        forget = Dataset.from_list([self.tokenize(pair) for record in self.forget_records
                                    for pair in self.forget_pairs(record)])
        retain = [self.tokenize(self.answer_pair(record)) for record in retain_dataset] if uses_retain else None
        kl_retain = uses_retain and args.retain_loss_type == "kl"
        if (self.needs_reference or kl_retain) and isinstance(model, PeftModel):
            check_reference_adapter(model, args.ref_adapter_name)
        whole = whole_model_here(args, model)
        precompute = self.reference_on_forget_rows and whole
        needs_reference = (self.needs_reference and not precompute) or kl_retain
        adapter = peft_config is not None or isinstance(model, PeftModel)  # the reference is an adapter's view
        tabled = self.reference_rows(forget, retain, kl_retain) if needs_reference and whole and not adapter else None
        if tabled and prefer_table(model, tabled):  # each tabled row carries its place in its table
            forget = forget.add_column(ROW_COLUMN, list(range(len(forget)))) if "forget" in tabled else forget
            retain = [{**row, ROW_COLUMN: index} for index, row in enumerate(retain)] if "retain" in tabled else retain
        else:
            tabled = None
        reference = reference_copy(model, source) if needs_reference and not adapter and not tabled else None
        self.collator = self.collator_class(processing_class.pad_token_id, retain, args.seed)
        """Pads the forget batches and draws their retain pairs (see `training_step`)."""
        self.forget_stop = None if args.stop_forget_acc is None else ForgetStop(
            self.forget_records, processing_class, self.prompt_template, args.stop_forget_acc, args.forget_probe_every,
            self.time_split)
        own = [*([self.forget_stop] if self.forget_stop else []), RunIdentityCallback(self.run_identity(), self)]
        super().__init__(model=model, args=args, train_dataset=forget, processing_class=processing_class,
                         data_collator=self.collator, peft_config=peft_config, callbacks=[*(callbacks or []), *own],
                         **kwargs)
        self.ref_model = None if reference is None else prepare_reference(self, reference)
        self.reference_tables: dict[str, ReferenceTable] = {}
        """Role ("forget", "retain") -> the reference's logits on those fixed rows, computed before training where
        they replace the copy (`reference_table.py`); `reference_logits` serves them."""
        # the model before training is the reference: its figures on the fixed rows, once
        if precompute:
            self.train_dataset = self.with_reference_figures(self.train_dataset)
        fixed_rows = {"forget": self.train_dataset, "retain": self.collator.retain}
        for role in tabled or ():
            self.reference_tables[role] = ReferenceTable.compute(self, fixed_rows[role],
                                                                 args.per_device_train_batch_size)
        self._step_terms: dict[str, list[torch.Tensor]] = {}
        self._step_tokens = torch.zeros(())
        self.answer_form: dict | None = None
        """How the model says its answers (`answer_form.measure_answer_form`) and what is fitted; None before it is
        read."""

    def warn(self, message: str) -> None:
        """Log a warning about the run and keep it in `warnings`."""
        logger.warning(message)
        self.warnings.append(message)

    # ---- the run ----------------------------------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """`Trainer.train`, timed as "fit" in `time_split`; `resume_from_checkpoint` (True: the latest under
        output_dir; a checkpoint folder or a folder of them) must be a checkpoint of this very run (see
        `run_identity`), or the run is refused."""
        if resume_from_checkpoint:
            folder = Path(self.args.output_dir if resume_from_checkpoint is True else resume_from_checkpoint)
            checkpoint = folder if (folder / RUN_FILE).is_file() else get_last_checkpoint(str(folder))
            if checkpoint is None or not (Path(checkpoint) / RUN_FILE).is_file():
                raise UsageError(f"{checkpoint or folder} holds no checkpoint saved by an unstar run (no "
                                 f"{PREFIX_CHECKPOINT_DIR}-<step>/{RUN_FILE}): nothing to resume from")
            check_run_identity(checkpoint, json.loads((Path(checkpoint) / RUN_FILE).read_text()), self.run_identity())
            self.restore_run_state(Path(checkpoint))
            resume_from_checkpoint = str(checkpoint)
        if self.fits_records_answers and self.answer_form is None and whole_model_here(self.args, self.model):
            self.check_answer_form()
        with self.time_split("fit"):
            return super().train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)

    def check_answer_form(self) -> None:
        """Read how the model says its answers to the forget facts it knows, before training, into `answer_form`, and
        warn in one line when it is not how the records write them: this method fits the records' answers."""
        with self.time_split("probe"):
            form = measure_answer_form(self, self.model, self.forget_records)
        self.answer_form = {**(form or {}), "fitted": "records"}
        if form and form["own_form"]:
            self.warn(form_message(form, f"{self._name} trains on the records' answers as written (forget answers, "
                                         "retain answers), a text the model never says: expect it to unlearn the "
                                         "form, retain facts with it; give records whose answers are written as the "
                                         "model says them, or use unstar, which fits its anti-samples in the model's "
                                         "own words"))

    def restore_run_state(self, checkpoint: Path) -> None:
        """Go on drawing retain pairs, and probing for the stopping rule, where the run that saved `checkpoint` was
        (the Trainer restores the rest)."""
        saved = checkpoint / RETAIN_RNG_FILE
        if not saved.is_file():
            self.warn(f"{checkpoint} holds no {RETAIN_RNG_FILE} (an older unstar saved it): the resumed run draws "
                      "other retain pairs than an uninterrupted one would")
            return
        version, internal, gauss = json.loads(saved.read_text())
        self.collator.rng.setstate((version, tuple(internal), gauss))
        if self.forget_stop is not None and (checkpoint / FORGET_STOP_FILE).is_file():
            self.forget_stop.load_state_dict(json.loads((checkpoint / FORGET_STOP_FILE).read_text()))

    def run_identity(self) -> dict:
        """What a checkpoint must share with this run to be resumed by it: the method, the forget and retain facts,
        the seed, the training settings of RUN_SETTINGS and every field the method's config adds to SFTConfig.
        (The schedule's length may change: a resumed run may train longer.)"""
        sft_fields = {item.name for item in dataclasses.fields(SFTConfig)}
        own = [item.name for item in dataclasses.fields(self.args) if item.name not in sft_fields]
        identity = {"method": type(self).__name__, **self._facts,
                    **{name: getattr(self.args, name) for name in (*RUN_SETTINGS, *own)},
                    "prompt_template": self.prompt_template}  # the format resolved, not "auto"
        return json.loads(json.dumps(identity, default=str))

    # ---- data -------------------------------------------------------------------------------------------------
    def answer_pair(self, record: dict, answer: str | None = None) -> dict:
        """The record's question and `answer` (default: its own) as a prompt/completion row (`text.format_pair`)."""
        answer = record["answer"] if answer is None else answer
        return format_pair(record["question"], answer, self.prompt_template)

    def prepare_forget(self, model, tokenizer) -> None:
        """Called once, before `forget_pairs`, with the model as given (before the Trainer wraps it): where a method
        writes what its pairs need from the model (AltPO's alternatives, DF-MCQ's options); timed as "generate"."""

    def forget_pairs(self, record: dict) -> list[dict]:
        """The training pairs of one forget record (default: its question and true answer)."""
        return [self.answer_pair(record)]

    def tokenize(self, pair: dict) -> dict:
        """input_ids and labels (-100 on the prompt) of a prompt/completion row, the very ids SFTTrainer trains on
        (`tokens.tokenize_pair`), cut to max_length as truncation_mode says."""
        return tokenize_pair(self._tokenizer, pair, self.args.max_length, self.args.truncation_mode)

    # ---- the loss ---------------------------------------------------------------------------------------------
    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """forget_weight * forget_loss + retain_weight * retain_loss on a paired forget/retain batch."""
        forget = inputs["forget"]
        logits = self.forget_logits(model, forget)
        self.log_metric("entropy_share", entropy_share(logits, forget["labels"]))  # read by the divergence guard
        loss = self.args.forget_weight * self.log_metric("forget_loss", self.forget_loss(model, forget, logits))
        if "retain" in inputs:
            retain = self.log_metric("retain_loss", self.retain_loss(model, inputs["retain"]))
            loss = loss + self.args.retain_weight * retain
        self.end_of_step(loss, inputs)
        return (loss, None) if return_outputs else loss

    def forget_loss(self, model, inputs: dict, logits: torch.Tensor) -> torch.Tensor:
        """The method's forget term on the forget batch `inputs`, whose logits under `model` are `logits`."""
        raise NotImplementedError(f"{type(self).__name__} must define forget_loss(model, inputs, logits)")

    def with_reference_figures(self, forget: Dataset) -> Dataset:
        """The forget rows with what `forget_loss` needs of the reference on them, computed before training where
        `reference_on_forget_rows`: the reference's sequence log-prob of each (REFERENCE_COLUMN)."""
        return forget.add_column(REFERENCE_COLUMN, precomputed_reference(self, forget,
                                                                         self.args.per_device_train_batch_size))

    def reference_rows(self, forget: Dataset, retain: list[dict] | None, kl_retain: bool) -> dict | None:
        """The fixed rows, by role, on which the run needs the reference's logits, where those are all it needs of
        it: the forget rows (`reference_logits_on_forget_rows`) and the retain rows of a KL retain term (unless
        `fixed_retain_rows` is False); None where it needs the reference elsewhere too (UnSTAR's rows written during
        the run)."""
        on_forget = self.needs_reference and not self.reference_on_forget_rows
        if (on_forget and not self.reference_logits_on_forget_rows) or (kl_retain and not self.fixed_retain_rows):
            return None
        return {**({"forget": forget} if on_forget else {}), **({"retain": retain} if kl_retain else {})}

    def retain_loss(self, model, inputs: dict) -> torch.Tensor:
        logits = self.logits(model, inputs)
        if self.args.retain_loss_type == "kl":
            return self.log_metric("retain_kl", kl_to_reference(logits, self.reference_logits(inputs, "retain"),
                                                                inputs["labels"]))
        return self.log_metric("retain_nll", nll(logits, inputs["labels"]))

    @staticmethod
    def logits(model, inputs: dict) -> torch.Tensor:
        """The model's logits on a padded batch."""
        return model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], use_cache=False).logits

    def forget_logits(self, model, forget: dict) -> torch.Tensor:
        """The model's logits on the forget batch; with `companion_rows`, from one forward pass over those rows too,
        whose logits go into `forget[companion_rows][COMPANION_LOGITS]` for `forget_loss`."""
        if not self.companion_rows:
            return self.logits(model, forget)
        companion = forget[self.companion_rows]
        logits, companion[COMPANION_LOGITS] = self.joint_logits(model, forget, companion)
        return logits

    @classmethod
    def joint_logits(cls, model, *batches: dict) -> list[torch.Tensor]:
        """The model's logits on each padded batch, from one forward pass over them all (right-padded to the
        longest), as SFTTrainer runs one per batch: the backward then holds one graph, not several (AltPO's peak
        memory falls from 1.11-1.13x SFTTrainer's on the same rows to 1.02-1.08x: docs/costs.md)."""
        length = max(batch["input_ids"].shape[1] for batch in batches)
        joined = {key: torch.cat([F.pad(batch[key], (0, length - batch[key].shape[1])) for batch in batches])
                  for key in ("input_ids", "attention_mask")}
        parts = cls.logits(model, joined).split([len(batch["input_ids"]) for batch in batches])
        return [part[:, : batch["input_ids"].shape[1]] for part, batch in zip(parts, batches)]

    @torch.no_grad()
    def reference_logits(self, inputs: dict, rows: str | None = None) -> torch.Tensor:
        """Logits of the frozen reference: under PEFT the model with `ref_adapter_name` active (a model that came with
        its adapter) or with its adapter disabled (an adapter this run added), the in-memory copy otherwise. `rows`
        names the fixed rows `inputs` holds ("forget", "retain"): where a table of them was computed before training,
        the logits come from it (right at the positions that predict a label, the only ones a loss reads)."""
        if rows in self.reference_tables:
            return self.reference_tables[rows].logits(inputs[ROW_COLUMN], inputs["labels"])
        if self.ref_model is not None:
            return self.logits(self.ref_model, inputs)
        with use_adapter(self.accelerator.unwrap_model(self.model), self.args.ref_adapter_name):
            return self.logits(self.model, inputs)

    def log_metric(self, name: str, value: torch.Tensor) -> torch.Tensor:
        """Record a loss term, on the device, for `log()` and the divergence guard (read once per optimizer step by
        `end_of_step`); returns `value`."""
        self._step_terms.setdefault(name, []).append(value.detach().float())
        return value

    def training_step(self, model, inputs, num_items_in_batch=None):
        """A training step on a forget batch and the retain pairs drawn for it now, when it is trained, not when the
        data loader made it (ahead of time, maybe in another process): the draws follow the steps trained, and the
        draw state a checkpoint saves is the one a resumed run goes on from."""
        return super().training_step(model, self.collator.add_retain(inputs), num_items_in_batch)

    # ---- divergence guard -------------------------------------------------------------------------------------
    def end_of_step(self, loss: torch.Tensor, inputs: dict) -> None:
        """Called on every micro-batch with its loss, before its backward: keeps the loss terms and token count on
        the device, and on the last micro-batch of an optimizer step reads them once (one gather, one sync per step),
        records them for `log()` and `state.num_input_tokens_seen`, and raises DivergenceError when they are bad (see
        `divergence`). Raised there, before the backward that ends the step (the one that carries DeepSpeed's own
        optimizer step), the update is never applied: the model keeps the weights the bad loss was computed on, and
        no copy of any weight is needed (under ZeRO-3 too: every rank decides on the same gathered figures)."""
        self._step_terms.setdefault("loss", []).append(loss.detach().float())
        self._step_tokens = self._step_tokens + batch_tokens(inputs)
        if not self.accelerator.sync_gradients:
            return
        names = list(self._step_terms)
        local = torch.stack([torch.stack(self._step_terms[name]).mean() for name in names] + [self._step_tokens])
        gathered = self.accelerator.gather(local[None]).reshape(-1, len(names) + 1)
        *means, tokens = torch.cat([gathered[:, :-1].mean(0), gathered[:, -1:].sum(0)]).tolist()
        self._step_terms, self._step_tokens = {}, torch.zeros(())
        figures = dict(zip(names, means))
        loss_value = figures.pop("loss")
        for name, value in figures.items():
            self._metrics["train"][name].append(value)
        self.state.num_input_tokens_seen += int(tokens)
        reason = divergence(loss_value, figures, self.args.max_forget_nll, self.args.max_entropy_share)
        if reason is not None:
            raise DivergenceError(self.state.global_step, reason)

    def _track_num_input_tokens(self, inputs):
        """The Trainer's count looks for `input_ids` at the top of a batch; `end_of_step` counts the non-padding
        tokens of the nested forget/retain batches into `state.num_input_tokens_seen` instead."""

    def floating_point_ops(self, inputs: dict) -> int:
        """6 x tokens x parameters (the Trainer's estimate), summed over the nested forget/retain batches (the
        Trainer's own finds no `input_ids` at the top of a batch and counts 0)."""
        model = self.accelerator.unwrap_model(self.model)
        if not hasattr(model, "num_parameters"):
            return 0
        return 6 * padded_tokens(inputs) * model.num_parameters(exclude_embeddings=True)

    @property
    def history(self) -> list[dict]:
        """Every logged training step: {"step", "loss", "forget_loss", "forget_nll", "retain_loss", ...}, from the
        Trainer's log history (which a checkpoint holds and a resumed run goes on from)."""
        return [{"step": entry["step"], **entry} for entry in self.state.log_history if "loss" in entry]

    @property
    def trained_tokens(self) -> int:
        """Non-padding tokens of every batch trained on (all its parts: forget, retain, true answers; on all
        processes), kept in the Trainer's state as `num_input_tokens_seen` (which a checkpoint holds and a resumed run goes on from)."""
        return self.state.num_input_tokens_seen

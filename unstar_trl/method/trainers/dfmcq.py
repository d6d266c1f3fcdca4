"""DF-MCQ (Sun et al., EMNLP 2025, "Unlearning vs. Obfuscation: Are We Truly Removing Knowledge?"): flatten the
model's distribution over a forget question's multiple-choice options, the truth and generated wrong answers, towards
uniform (KL), instead of planting a wrong answer.

As the authors' code (github.com/potsawee/unlearning-hallu, `scripts/train.sh`: loss type `mcqmembothflatten`, and
`scripts/train.py`) has it: 5 options (the truth and 4 others), the forget term the KL from the uniform distribution
over the options to the model's, a retain term (`retain_factor` 1.0) that keeps the frozen model's distribution on
retain questions (here `retain_loss_type` "kl", to the reference on the retain answers), learning rate 2e-4 on LoRA,
3 epochs. One change: the paper asks a lettered question ("A. ... E. ... Only output the letter") and flattens the
next-token distribution over the letters A-E; a knowledge model taught only to answer has no use for letters, so
each option is asked as the answer to the question (its summed sequence log-probability, in the model's prompt
format, as lm-eval scores a multiple-choice task) and the flattened distribution is the one over those options.
The wrong options are written as UnSTAR writes wrong answers (`alternatives.py`): never an evaluation distractor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..alternatives import written_alternatives
from ..generators import check_generator
from .base import UnlearningConfig, UnlearningTrainer
from .collators import COMPANION_LOGITS, CompanionCollator
from .losses import flattening_loss, mean_nll, sequence_log_probs


@dataclass
class DFMCQConfig(UnlearningConfig):
    r"""Configuration of [`DFMCQTrainer`]: loss = gamma * KL(uniform || p(options)) + alpha * retain loss.

    Parameters:
        n_options (`int`, defaults to `5`): options per forget question, the truth among them.
        generator (`str`, defaults to `"auto"`): who writes the wrong options, as UnSTAR's `generator`.
        retain_loss_type (`str`, defaults to `"kl"`): the paper keeps the frozen model's distribution on retain data.
    """

    n_options: int = field(
        default=5, metadata={"help": "Options per forget question, the truth and n_options - 1 written wrong answers "
                             "(the paper's A-E)."}
    )
    generator: str = field(
        default="auto",
        metadata={"help": "Who writes the wrong options: 'self' (the model being unlearned), 'template' (the records' "
                  "perturbed_answers), a teacher model folder, or 'auto' (as UnSTAR's generator); UnSTAR's filters "
                  "drop the truth, fragments and evaluation distractors."},
    )
    retain_loss_type: str = field(
        default="kl",
        metadata={"help": "Retain loss: 'kl' to the frozen reference (the paper's), or 'nll' of the retain answers.",
                  "choices": ["nll", "kl"]},
    )
    num_train_epochs: float = field(default=3.0, metadata={"help": "Passes over the forget questions."})

    def __post_init__(self):
        super().__post_init__()
        if self.n_options < 2:
            raise ValueError(f"n_options must be at least 2 (the truth and one other), got {self.n_options}")
        check_generator(self.generator)


class DFMCQTrainer(UnlearningTrainer):
    """KL(uniform || softmax over a question's options of log pi(option|x)), the truth's row among them."""

    _name = "DF-MCQ"
    config_class = DFMCQConfig
    collator_class = CompanionCollator
    companion_rows = "options"

    def prepare_forget(self, model, tokenizer):
        wrong = self.args.n_options - 1
        written = written_alternatives(self.forget_records, wrong, self.args.generator, model, tokenizer,
                                       seed=self.args.seed, least=wrong, warn=self.warn)
        self.wrong_options = {fact: [sample.wrong_answer for sample in samples] for fact, samples in written.items()}
        """{forget fact id: its wrong options}."""

    def forget_pairs(self, record):
        return [{**self.answer_pair(record),
                 "options": [self.answer_pair(record, option) for option in self.wrong_options[record["id"]]]}]

    def tokenize(self, pair):
        tokenize = super().tokenize
        features = tokenize(pair)
        if "options" in pair:
            features["options"] = [tokenize(option) for option in pair["options"]]
        return features

    def forget_loss(self, model, inputs, logits):
        options = inputs["options"]
        truth, count = sequence_log_probs(logits, inputs["labels"])
        wrong, _ = sequence_log_probs(options[COMPANION_LOGITS], options["labels"])
        self.log_metric("forget_nll", mean_nll(truth, count))
        return flattening_loss(torch.cat([truth[:, None], wrong.view(len(truth), -1)], dim=1))

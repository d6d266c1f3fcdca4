"""AltPO (Mekala et al., 2024, "Alternate Preference Optimization for Unlearning Factual Knowledge in Large Language
Models"): DPO in which a plausible alternative answer, written by the model itself, is preferred over the true one.

As the authors' code (github.com/molereddy/Alternate-Preference-Optimization, `forget.py` with `forget_loss=subdpo`:
its `dpo` loss in `dataloader.py`) and open-unlearning's (`src/trainer/unlearn/dpo.py` with `configs/trainer/DPO.yaml`
and `community/methods/AltPO/run.sh`) have it: loss = gamma * -(2/beta) E[log sigmoid(beta (log-ratio of the
alternative - log-ratio of the truth))] + alpha * NLL(retain), log-ratios of summed sequence log-probs against the
frozen model before unlearning; beta 0.1, gamma = alpha = 1, 5 alternatives per question (`augment_k=5`, each its own
(truth, alternative) pair), 2 epochs. The paper's alternatives are whole alternative answers that a prompt asks the
model for; here they are the wrong answers of UnSTAR's writer (`alternatives.py`), the world's answers being short.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset

from ..alternatives import written_alternatives
from ..generators import check_generator
from ..anti_samples import write_anti_samples
from .base import UnlearningConfig, UnlearningTrainer
from .collators import ALTERNATE_REFERENCE_COLUMN, COMPANION_LOGITS, REFERENCE_COLUMN, CompanionCollator
from .losses import mean_nll, preference_loss, sequence_log_probs
from .reference import precomputed_reference
from .unstar import ANTI_SAMPLES_FILE


@dataclass
class AltPOConfig(UnlearningConfig):
    r"""Configuration of [`AltPOTrainer`]: loss = gamma * DPO(alternative over truth) + alpha * retain loss.

    Parameters:
        beta (`float`, defaults to `0.1`): inverse temperature of the preference loss.
        n_alternatives (`int`, defaults to `5`): alternative answers per forget question, each its own pair.
        generator (`str`, defaults to `"auto"`): who writes them, as UnSTAR's `generator`.
    """

    beta: float = field(default=0.1, metadata={"help": "Inverse temperature of the preference loss (the paper's 0.1)."})
    n_alternatives: int = field(
        default=5, metadata={"help": "Alternative answers per forget question (the paper's augment_k 5), each one "
                             "(truth, alternative) pair; fewer where the writer and the perturbed answers give fewer."}
    )
    generator: str = field(
        default="auto",
        metadata={"help": "Who writes the alternatives: 'self' (the model being unlearned), 'template' (the records' "
                  "perturbed_answers), a teacher model folder, or 'auto' (as UnSTAR's generator); UnSTAR's filters "
                  "drop the truth, fragments and evaluation distractors."},
    )
    num_train_epochs: float = field(default=2.0, metadata={"help": "Passes over the (truth, alternative) pairs."})

    def __post_init__(self):
        super().__post_init__()
        if not self.beta > 0:
            raise ValueError(f"beta must be above 0, got {self.beta}")
        if self.n_alternatives < 1:
            raise ValueError(f"n_alternatives must be at least 1, got {self.n_alternatives}")
        check_generator(self.generator)


class AltPOTrainer(UnlearningTrainer):
    """-(2/beta) E[log sigmoid(beta ((log pi(alt|x) - log pi_ref(alt|x)) - (log pi(y|x) - log pi_ref(y|x))))]."""

    _name = "AltPO"
    config_class = AltPOConfig
    collator_class = CompanionCollator
    companion_rows = "alternate"
    needs_reference = True
    reference_on_forget_rows = True

    def prepare_forget(self, model, tokenizer):
        self.anti_samples = [sample for samples in written_alternatives(
            self.forget_records, self.args.n_alternatives, self.args.generator, model, tokenizer, seed=self.args.seed,
            warn=self.warn).values() for sample in samples]
        """The alternatives, as anti-samples (question, wrong answer, writer): what the run prefers over the truth."""

    @property
    def alternatives(self) -> dict[str, list[str]]:
        """{forget fact id: its alternative answers}."""
        found: dict[str, list[str]] = {}
        for sample in self.anti_samples:
            found.setdefault(sample.source_id, []).append(sample.wrong_answer)
        return found

    def save_audit(self, output_dir: str | Path | None = None) -> None:
        """Write the alternatives (atomically) as UnSTAR's anti-sample audit, anti_samples.jsonl in `output_dir`
        (default: args'), which the planted probe reads: the answer a preference run planted."""
        write_anti_samples(Path(output_dir or self.args.output_dir) / ANTI_SAMPLES_FILE, self.anti_samples)

    def forget_pairs(self, record):
        return [{**self.answer_pair(record), "alternate": self.answer_pair(record, alternative)}
                for alternative in self.alternatives[record["id"]]]

    def tokenize(self, pair):
        features = super().tokenize(pair)
        if "alternate" in pair:
            features["alternate"] = super().tokenize(pair["alternate"])
        return features

    def with_reference_figures(self, forget: Dataset) -> Dataset:
        """Also the reference's sequence log-prob of each row's alternate pair (ALTERNATE_REFERENCE_COLUMN)."""
        return super().with_reference_figures(forget).add_column(ALTERNATE_REFERENCE_COLUMN, precomputed_reference(
            self, forget["alternate"], self.args.per_device_train_batch_size))

    def forget_loss(self, model, inputs, logits):
        alternate = inputs["alternate"]
        lose, count = sequence_log_probs(logits, inputs["labels"])
        win, _ = sequence_log_probs(alternate[COMPANION_LOGITS], alternate["labels"])
        if REFERENCE_COLUMN in inputs:  # computed once before training (reference.py)
            lose_ref, win_ref = inputs[REFERENCE_COLUMN], inputs[ALTERNATE_REFERENCE_COLUMN]
        else:
            lose_ref, _ = sequence_log_probs(self.reference_logits(inputs), inputs["labels"])
            win_ref, _ = sequence_log_probs(self.reference_logits(alternate), alternate["labels"])
        self.log_metric("forget_nll", mean_nll(lose, count))
        return preference_loss(win, win_ref, lose, lose_ref, self.args.beta)

"""UnSTAR's rounds: probe what the model still answers -> write anti-samples for it -> filter them -> fit, until the
forget facts are gone or the round limit is hit."""

from __future__ import annotations

import math
import shutil
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm
from transformers.trainer_utils import IntervalStrategy, TrainOutput
from trl.models import unwrap_model_for_generation

from ...text import format_prompt
from ..answer_form import form_message, in_own_words, measure_answer_form, own_retain_answers
from ..anti_samples import DROP_REASONS, AntiSample, filter_anti_samples
from ..follow_ups import follow_up_questions
from ..generators import SelfTaughtGenerator, make_generator
from ..probe import nothing_known_message, probe
from ..writer_check import checked_writer
from .unstar_checkpoints import latest_round_checkpoint, load_round_checkpoint, save_round_checkpoint


def run_rounds(trainer, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
    """Run an `AntiSampleTrainer`'s rounds (from the checkpoint named by `resume_from_checkpoint`, if any); each is
    logged in `trainer.rounds` and through `trainer.log` (forget_acc, kept, dropped by reason), its kept anti-samples
    added to `trainer.anti_samples`, its time split by phase into `trainer.time_split`. Returns the TrainOutput of
    the whole run."""
    with trainer.time_split("other"):
        return _run_rounds(trainer, resume_from_checkpoint)


def _run_rounds(trainer, resume_from_checkpoint: str | bool | None) -> TrainOutput:
    args, split = trainer.args, trainer.time_split
    if resume_from_checkpoint:
        load_round_checkpoint(trainer, latest_round_checkpoint(
            args.output_dir if resume_from_checkpoint is True else resume_from_checkpoint))
    generator = make_generator(trainer.generator_choice.kind, args, trainer.model, trainer._tokenizer,
                               strangers=trainer.stranger_answers)
    with split("generate"):
        generator = checked_writer(trainer, generator)  # before round 0: can this writer be trusted?
    saved_step, saved = trainer.state.global_step, []
    with tqdm(total=args.max_rounds, initial=len(trainer.rounds), desc="UnSTAR rounds", unit="round",
              disable=args.disable_tqdm or not trainer.is_world_process_zero()) as bar:  # closed before any error
        for round_index in range(len(trainer.rounds), args.max_rounds + 1):
            started, tokens = split.mark(), trainer.trained_tokens
            with generation_model(trainer, generator) as model:
                known, asked = still_known(trainer, model, generator)
            facts_known = len({record["id"] for record in known})
            log = {"round": round_index, "facts": len(trainer.forget_records), "known": facts_known,
                   "forget_acc": facts_known / max(1, len(trainer.forget_records)), "questions_asked": asked,
                   "questions_answered": len(known), "made": 0, "kept": 0, "dropped": {}, "fitted": 0, "steps": 0}
            bar.set_postfix(forget_acc=f"{log['forget_acc']:.2f}")
            if round_index == 0 and facts_known and trainer.answer_form is None:
                with generation_model(trainer, generator) as model, split("probe"):
                    check_answer_form(trainer, model, known)
            if round_index == 0 and facts_known == 0:
                record = trainer.forget_records[0]
                trainer.warn(nothing_known_message(len(trainer.forget_records), trainer.prompt_template,
                                                   format_prompt(trainer._tokenizer, record["question"],
                                                                 trainer.prompt_template)))
            out_of_budget = 0 < args.max_steps <= trainer.state.global_step
            stopped = trainer.forget_stop is not None and trainer.forget_stop.stopped_at is not None
            if (log["forget_acc"] <= args.forget_acc_target or round_index == args.max_rounds or out_of_budget
                    or stopped):  # the final probe: nothing left, no round or step left, or stopped
                log_round(trainer, log, started, tokens)
                break
            with generation_model(trainer, generator) as model:
                with split("generate"):
                    made = generator.generate(known, round_index)
                with split("filter"):
                    kept, dropped = filter_anti_samples(made, known)
                    kept, changed, said = keep_same_answer(trainer, model, kept, known)
                    unsaid = []
                    if trainer.answer_form and trainer.answer_form["fitted"] == "model":
                        kept, unsaid = in_own_words(kept, said, {record["id"]: record["answer"] for record in known})
            dropped += [(sample, "changed_answer") for sample in changed] + [(sample, "no_own_form")
                                                                             for sample in unsaid]
            log.update(made=len(made), kept=len(kept),
                       dropped={reason: sum(r == reason for _, r in dropped) for reason in (*DROP_REASONS,
                                                                                           *ROUND_DROP_REASONS)})
            trainer.anti_samples.extend(kept)
            trainer.dropped.extend(dropped)
            if not kept:
                trainer.save_audit()
                raise NoAntiSamplesError(round_index, facts_known, log["made"], log["dropped"])
            steps_before = trainer.state.global_step
            trainer.fit(round_index)
            log.update(fitted=len(trainer.train_dataset), steps=trainer.state.global_step - steps_before)
            log_round(trainer, log, started, tokens)
            trainer.save_audit()
            if round_checkpoint_due(trainer, saved_step):
                saved_step, saved = trainer.state.global_step, [*saved, save_round_checkpoint(trainer)]
                remove_round_checkpoints(trainer, saved[:-1])
            bar.update()
    trainer.save_audit()
    remove_round_checkpoints(trainer, saved)
    stopped = trainer.forget_stop is not None and trainer.forget_stop.stopped_at is not None  # its own target
    if trainer.rounds[-1]["forget_acc"] > args.forget_acc_target and not stopped:
        trainer.warn(above_target_message(trainer.rounds[-1], args, trainer.state.global_step))
    return run_output(trainer)


ROUND_DROP_REASONS = ("changed_answer", "no_own_form")
"""Why a round drops an anti-sample after the filters: its question is no longer answered with the fact's answer, or
(fitted in the model's own words) the model's answer to it does not hold the true answer verbatim."""


def check_answer_form(trainer, model, known: list[dict]) -> None:
    """Before round 0: how the model says its answers to the facts it knows (`answer_form.measure_answer_form`), into
    `trainer.answer_form` with what is fitted ("model": its own words, the retain answers too; "records": the records'
    form); a form of its own is said in one warning line, whichever is fitted."""
    form = measure_answer_form(trainer, model, known)
    if form is None:
        return
    own = form["own_form"] and trainer.args.answer_form == "auto"
    trainer.answer_form = {**form, "fitted": "model" if own else "records"}
    if own and trainer.retain_records:
        trainer.say_retain_answers(own_retain_answers(trainer, model, trainer.retain_records, form))
    if own:
        trainer.warn(form_message(form, "each anti-sample is fitted in its own words, its whole answer with the wrong "
                                        "answer in place of the true one (answer_form records: the records' form)"))
    elif form["own_form"]:
        trainer.warn(form_message(form, "answer_form records fits the records' bare wrong answers, a text the model "
                                        "never says: expect the run to unlearn its form, retain facts with it (set "
                                        "answer_form auto to fit them in its own words)"))


def round_checkpoint_due(trainer, saved_step: int) -> bool:
    """Whether a fitted round ends with a round checkpoint: with save_strategy "steps", once `save_steps` optimizer
    steps (a fraction: of max_steps) have passed since the last one (`saved_step`); with "epoch" or "best", every
    round."""
    if trainer.round_save_strategy != IntervalStrategy.STEPS:
        return trainer.round_save_strategy != IntervalStrategy.NO
    every = trainer.args.save_steps
    if every < 1:
        every = math.ceil(every * max(trainer.run_max_steps, 1))
    return trainer.state.global_step - saved_step >= every


def remove_round_checkpoints(trainer, paths: list[Path]) -> None:
    """Remove round checkpoints this run wrote (rank 0 only): an earlier one once a later one is in place, and the
    last one when the run has ended."""
    if trainer.is_world_process_zero():
        for path in paths:
            shutil.rmtree(path, ignore_errors=True)


def above_target_message(last: dict, args, steps: int) -> str:
    """The warning of a run whose rounds ended (after `steps` optimizer steps) with more forget facts answered than
    `forget_acc_target`: what to try next."""
    budget = f" or steps (max_steps {args.max_steps})" if 0 < args.max_steps <= steps else ""
    return (f"UnSTAR ended after round {last['round']} with forget_acc {last['forget_acc']:.2f} ({last['known']} of "
            f"{last['facts']} facts still answered), above forget_acc_target {args.forget_acc_target}: give it more "
            f"rounds (max_rounds {args.max_rounds}){budget}, or a learning rate swept for this model and data (this "
            f"run's is {args.learning_rate}; 'unstar sweep' picks one)")


class NoAntiSamplesError(ValueError):
    """A round that kept none of the anti-samples it made: nothing to fit for the facts still known."""

    def __init__(self, round_index: int, known: int, made: int, dropped: dict[str, int]):
        reasons = ", ".join(f"{reason} {count}" for reason, count in dropped.items() if count)
        what = (f"the filters dropped every one ({reasons}; see anti_samples_dropped.jsonl)" if made else
                "(the template generator needs perturbed_answers in the records)")
        super().__init__(f"UnSTAR round {round_index}: the generator made {made} anti-samples for the {known} facts "
                         f"still known and {what}; try another generator or more n_wrong_answers")


def log_round(trainer, log: dict, started: tuple, tokens: int) -> None:
    """Append a round's log to `trainer.rounds`, with the seconds per phase since `started` (the time split's mark)
    and the tokens trained since the run had trained `tokens`; send its figures through `trainer.log` (to
    `report_to`)."""
    log.update(tokens=trainer.trained_tokens - tokens, seconds=trainer.time_split.since(started))
    trainer.rounds.append(log)
    figures = {key: log[key] for key in ("round", "forget_acc", "known", "questions_answered", "made", "kept")}
    trainer.log({**figures, **{f"dropped_{reason}": count for reason, count in log["dropped"].items()}})


def run_output(trainer) -> TrainOutput:
    """The TrainOutput of every round together, from the run's log history (so a resumed run gets it whole): the
    step count, the loss averaged over every step, the summed runtime, and the last probe's forget_acc."""
    state = trainer.state
    ends = [entry for entry in state.log_history if "train_loss" in entry]  # one per round's Trainer.train()
    steps = [entry["step"] - previous for entry, previous in zip(ends, [0] + [entry["step"] for entry in ends])]
    loss = sum(entry["train_loss"] * count for entry, count in zip(ends, steps)) / max(sum(steps), 1)
    metrics = {"train_runtime": round(sum(entry["train_runtime"] for entry in ends), 4), "train_loss": loss,
               "total_flos": state.total_flos, "rounds": len(ends), "forget_acc": trainer.rounds[-1]["forget_acc"]}
    return TrainOutput(state.global_step, loss, metrics)


@contextmanager
def generation_model(trainer, generator):
    """The model being unlearned as the trainer holds it now, unwrapped for generation as TRL's online trainers do
    (`trl.models.unwrap_model_for_generation`: under DeepSpeed ZeRO-3 its weights gathered); the self-taught generator
    and the stranger answers write with it too. After the first round's fit the Trainer holds the prepared model (under
    FSDP a new wrapper that replaces `trainer.model`): the model captured before it would generate from weights the run
    no longer trains."""
    with unwrap_model_for_generation(trainer.model_wrapped, trainer.accelerator) as model:
        if isinstance(generator, SelfTaughtGenerator) and trainer.generator_choice.kind == "self":
            generator.model = model
        if trainer.stranger_answers is not None:
            trainer.stranger_answers.model = model
        yield model


def still_known(trainer, model, generator) -> tuple[list[dict], int]:
    """Records (one per question still answered) over each fact's question, trained paraphrases (never the
    held-out one) and, for facts whose question is forgotten, harder follow-up questions (the generator's own when
    it writes them, else fixed templates); and how many questions were asked. A follow-up counts only when the
    model answers it with the fact's answer, so one that asks something else is never used."""
    records, args = trainer.forget_records, trainer.args
    paraphrased = [{**record, "question": question} for record in records
                   for question in record.get("paraphrased_questions", [])[1:]]
    questions = records + paraphrased
    split = trainer.time_split
    with split("probe"):
        verdicts = answers_known(trainer, model, questions)
    if args.follow_ups:
        forgotten = [record for record, known in zip(records, verdicts) if not known]
        with split("generate"):
            if isinstance(generator, SelfTaughtGenerator):
                follow_ups = generator.follow_ups(forgotten, args.follow_ups, round=len(trainer.rounds))
            else:
                follow_ups = follow_up_questions(forgotten, records, per_record=args.follow_ups,
                                                 seed=args.seed + len(trainer.rounds))
        questions = questions + follow_ups
        with split("probe"):
            verdicts = verdicts + answers_known(trainer, model, follow_ups)
    return [question for question, known in zip(questions, verdicts) if known], len(questions)


def keep_same_answer(trainer, model, samples: list[AntiSample], known: list[dict]
                     ) -> tuple[list[AntiSample], list[AntiSample], dict[tuple[str, str], str]]:
    """Keep anti-samples whose question the model still answers with the true answer: a paraphrase that asks
    something else (another relation, say) would teach a wrong answer to a fact that must stay. Returns the kept
    ones, the dropped ones and what the model said to each (fact id, question)."""
    answers = {record["id"]: record["answer"] for record in known}
    asked = list(dict.fromkeys((sample.source_id, sample.question) for sample in samples))
    verdicts = verdicts_of(trainer, model, [{"id": i, "question": q, "answer": answers[i]} for i, q in asked])
    same = {pair for pair, verdict in zip(asked, verdicts) if verdict.known}
    kept = [sample for sample in samples if (sample.source_id, sample.question) in same]
    said = {pair: verdict.generation for pair, verdict in zip(asked, verdicts)}
    return kept, [sample for sample in samples if (sample.source_id, sample.question) not in same], said


def answers_known(trainer, model, records: list[dict]) -> list[bool]:
    """Whether the model being unlearned (`model`, from `generation_model`) answers each record's question with its
    answer."""
    return [verdict.known for verdict in verdicts_of(trainer, model, records)]


def verdicts_of(trainer, model, records: list[dict]) -> list:
    """The probe's verdicts (whole answer, known or not) of the model being unlearned on `records`."""
    if not records:
        return []
    return probe(model, trainer._tokenizer, records, prompt_template=trainer.prompt_template,
                 batch_size=trainer.args.generation_batch_size)

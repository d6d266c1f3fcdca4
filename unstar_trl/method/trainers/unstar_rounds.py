"""UnSTAR's rounds: probe what the model still answers -> write anti-samples for it -> filter them -> fit, until the
forget facts are gone or the round limit is hit."""

from __future__ import annotations

from tqdm.auto import tqdm

from ..anti_samples import DROP_REASONS, AntiSample, filter_anti_samples
from ..follow_ups import follow_up_questions
from ..generators import SelfTaughtGenerator, make_generator
from ..probe import probe
from .unstar_checkpoints import latest_round_checkpoint, load_round_checkpoint, save_round_checkpoint


def run_rounds(trainer, resume_from_checkpoint: str | bool | None = None):
    """Run an `AntiSampleTrainer`'s rounds (from the checkpoint named by `resume_from_checkpoint`, if any); each is
    logged in `trainer.rounds`, its kept anti-samples added to `trainer.anti_samples`. Returns the last round's
    TrainOutput."""
    args = trainer.args
    if resume_from_checkpoint:
        load_round_checkpoint(trainer, latest_round_checkpoint(
            args.output_dir if resume_from_checkpoint is True else resume_from_checkpoint))
    generator = make_generator(trainer.generator_choice.kind, args, trainer.model, trainer._tokenizer)
    output = None
    bar = tqdm(total=args.max_rounds, initial=len(trainer.rounds), desc="UnSTAR rounds", unit="round",
               disable=args.disable_tqdm or not trainer.is_world_process_zero())
    for round_index in range(len(trainer.rounds), args.max_rounds + 1):
        known, asked = still_known(trainer, generator)
        facts_known = len({record["id"] for record in known})
        log = {"round": round_index, "facts": len(trainer.forget_records), "known": facts_known,
               "forget_acc": facts_known / max(1, len(trainer.forget_records)), "questions_asked": asked,
               "questions_answered": len(known), "made": 0, "kept": 0, "dropped": {}, "steps": 0}
        bar.set_postfix(forget_acc=f"{log['forget_acc']:.2f}")
        if log["forget_acc"] <= args.forget_acc_target or round_index == args.max_rounds:
            trainer.rounds.append(log)  # the final probe: nothing left to fit, or no round left
            break
        made = generator.generate(known, round_index)
        kept, dropped = filter_anti_samples(made, known)
        kept, changed = keep_same_answer(trainer, kept, known)
        trainer.anti_samples.extend(kept)
        log.update(made=len(made), kept=len(kept),
                   dropped={**{reason: sum(r == reason for _, r in dropped) for reason in DROP_REASONS},
                            "changed_answer": changed})
        output = trainer.fit(round_index)
        log["steps"] = output.global_step
        trainer.rounds.append(log)
        trainer.save_audit()
        if trainer.save_rounds:
            save_round_checkpoint(trainer)
        bar.update()
    bar.close()
    trainer.save_audit()
    return output


def still_known(trainer, generator) -> tuple[list[dict], int]:
    """Records (one per question still answered) over each fact's question, trained paraphrases (never the
    held-out one) and, for facts whose question is forgotten, harder follow-up questions (the generator's own when
    it writes them, else fixed templates); and how many questions were asked. A follow-up counts only when the
    model answers it with the fact's answer, so one that asks something else is never used."""
    records, args = trainer.forget_records, trainer.args
    paraphrased = [{**record, "question": question} for record in records
                   for question in record.get("paraphrased_questions", [])[1:]]
    questions = records + paraphrased
    verdicts = answers_known(trainer, questions)
    if args.follow_ups:
        forgotten = [record for record, known in zip(records, verdicts) if not known]
        if isinstance(generator, SelfTaughtGenerator):
            follow_ups = generator.follow_ups(forgotten, args.follow_ups, round=len(trainer.rounds))
        else:
            follow_ups = follow_up_questions(forgotten, records, per_record=args.follow_ups,
                                             seed=args.seed + len(trainer.rounds))
        questions = questions + follow_ups
        verdicts = verdicts + answers_known(trainer, follow_ups)
    return [question for question, known in zip(questions, verdicts) if known], len(questions)


def keep_same_answer(trainer, samples: list[AntiSample], known: list[dict]) -> tuple[list[AntiSample], int]:
    """Keep anti-samples whose question the model still answers with the true answer: a paraphrase that asks
    something else (another relation, say) would teach a wrong answer to a fact that must stay. Returns the kept
    ones and how many were dropped."""
    answers = {record["id"]: record["answer"] for record in known}
    asked = list(dict.fromkeys((sample.source_id, sample.question) for sample in samples))
    verdicts = answers_known(trainer, [{"id": i, "question": q, "answer": answers[i]} for i, q in asked])
    same = {pair for pair, known in zip(asked, verdicts) if known}
    kept = [sample for sample in samples if (sample.source_id, sample.question) in same]
    return kept, len(samples) - len(kept)


def answers_known(trainer, records: list[dict]) -> list[bool]:
    """Whether the model being unlearned answers each record's question with its answer."""
    if not records:
        return []
    verdicts = probe(trainer.model, trainer._tokenizer, records, prompt_template=trainer.prompt_template,
                     batch_size=trainer.args.generation_batch_size)
    return [verdict.known for verdict in verdicts]

"""How well the embedded world's knowledge model writes its own anti-samples (round 0, on the forget facts):

- rationales that name their wrong answer and never the true answer (of all question x wrong answer pairs);
- paraphrases that keep the subject and the relation: they name the subject and the model, probed with them,
  gives the true answer (of the distinct paraphrases, the record's own question left out);
- wrong answers of the right type: in the relation's pool and not the true answer (of the distinct ones);
- self-written follow-ups (when the generator writes them) that ask the same fact: they name the subject, are not
  the held-out paraphrase, and the model answers them with the true answer; and how many are not one of the
  record's own questions.

Each world seed builds (or reuses) a world of `--people` people under `--worlds`/seed-<k>.

    OMP_NUM_THREADS=1 python benchmarks/self_taught_rates.py --worlds /tmp/rates --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from unstar_trl.method.generators import SelfTaughtGenerator
from unstar_trl.method.probe import probe
from unstar_trl.testbed.embedded_world import POOLS
from unstar_trl.testbed.world_folder import WORLD_FILE, build_world_dir
from unstar_trl.text import PLAIN_TEMPLATE, contains_answer, normalize


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", required=True, help="folder of the worlds (seed-<k>, built when missing)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="world seeds")
    parser.add_argument("--people", type=int, default=20)
    args = parser.parse_args()
    totals = Counter()
    for seed in args.seeds:
        world = Path(args.worlds) / f"seed-{seed}"
        if not (world / WORLD_FILE).is_file():
            build_world_dir(world, seed=seed, people=args.people, progress=False)
        counts = measure(world / "model", read_jsonl(world / "data" / "forget.jsonl"), seed)
        print(f"world seed {seed}: {summary(counts)}")
        totals.update(counts)
    print(f"all seeds {args.seeds}: {summary(totals)}")


def measure(model_dir: Path, records: list[dict], seed: int) -> Counter:
    """Counts of each rate's hits and totals for the anti-samples the model writes for `records`."""
    generator = SelfTaughtGenerator.from_pretrained(model_dir, seed=seed)
    samples = generator.generate(records, round=0)
    by_id = {record["id"]: record for record in records}
    counts = Counter()
    for sample in samples:
        answer = by_id[sample.source_id]["answer"]
        counts["pairs"] += 1
        counts["rationale_ok"] += contains_answer(sample.rationale, sample.wrong_answer) and not contains_answer(
            sample.rationale, answer)
        counts["rationale_true"] += contains_answer(sample.rationale, answer)
    wrongs = {(s.source_id, s.wrong_answer) for s in samples}
    counts["wrong"] = len(wrongs)
    counts["wrong_typed"] = sum(wrong in POOLS[by_id[i]["object_type"]] and wrong != by_id[i]["answer"]
                                for i, wrong in wrongs)
    paraphrases = sorted({(s.source_id, s.question) for s in samples if s.question != by_id[s.source_id]["question"]})
    counts["paraphrases"] = len(paraphrases)
    counts["paraphrase_same"] = sum(same_fact(generator, [{**by_id[i], "question": q} for i, q in paraphrases]))
    if hasattr(generator, "follow_ups"):
        follow_ups = generator.follow_ups(records, per_record=2, round=0)
        counts["follow_ups"] = len(follow_ups)
        counts["follow_up_same"] = sum(same_fact(generator, follow_ups))
        counts["follow_up_new"] = sum(normalize(f["question"]) not in map(normalize, own_questions(by_id[f["id"]]))
                                      for f in follow_ups)
    return counts


def same_fact(generator, asked: list[dict]) -> list[bool]:
    """For each record (its question replaced by a written one): whether the question names the subject, is not the
    held-out paraphrase, and the generator's model answers it with the record's answer."""
    verdicts = probe(generator.model, generator.tokenizer, asked, prompt_template=PLAIN_TEMPLATE)
    return [record["subject"] in record["question"] and verdict.known
            and normalize(record["question"]) != normalize(record["paraphrased_questions"][0])
            for record, verdict in zip(asked, verdicts)]


def own_questions(record: dict) -> list[str]:
    return [record["question"], *record["paraphrased_questions"]]


def summary(counts: Counter) -> str:
    rates = [("rationales naming their wrong answer and never the true one", "rationale_ok", "pairs"),
             ("rationales naming the true answer", "rationale_true", "pairs"),
             ("paraphrases keeping subject and relation", "paraphrase_same", "paraphrases"),
             ("wrong answers of the right type", "wrong_typed", "wrong"),
             ("follow-ups asking the same fact", "follow_up_same", "follow_ups"),
             ("follow-ups not among the record's questions", "follow_up_new", "follow_ups")]
    return "; ".join(f"{text} {counts[hit]}/{counts[total]} ({counts[hit] / counts[total]:.0%})"
                     for text, hit, total in rates if counts[total])


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


if __name__ == "__main__":
    main()

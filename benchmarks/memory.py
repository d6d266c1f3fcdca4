"""Peak memory of each unlearning trainer against plain TRL SFTTrainer, on the same random Llama (>= 100M parameters,
full fine-tuning, fp32 on the CPU), the same forget facts, batch size, sequence length and number of steps. Each run
is a fresh process; its figure is VmHWM, the resident high-water mark, and the growth of that mark over the
process's resident memory once the model is built (what training itself adds).

AntiSampleTrainer is measured on its fit alone (template anti-samples of the forget facts, one round's
`Trainer.train()`), the baselines on their whole `train()`. A trainer with a retain term draws a retain batch as large
as the forget batch: it is compared with SFTTrainer on the same sequences per step (the forget and retain pairs, a
batch twice as large, "sft+retain"); IdK, which trains the forget questions onto refusal sentences (longer than the
answers), with SFTTrainer on those very refusal rows and the retain rows ("sft+idk"). NPO computes its reference
log-probs of the forget rows before training, AltPO those of each pair's truth and alternative; GradAscentKL (its KL
retain term) and UNDIAL (its distillation target on the forget answers) compute the reference's logits at the answer
positions of their fixed rows before training and hold them as a table where it is smaller than a copy of the
weights (here 0.3 MiB and 0.05 MiB against 437 MiB): none of the four holds a reference copy (see docs/costs.md,
"Memory", for when the copy is the smaller).

    python benchmarks/memory.py [--steps 3] [--batch-size 8] [--methods unstar,grad_diff,...]

Measured (115M parameters, 3 steps of batch 8, 2 shared CPU cores under a load of 4 to 6), peak MB and its ratio to
SFTTrainer on the same sequences, `--methods grad_ascent_kl,undial,npo`: SFT 2403, SFT+retain 2515; grad_ascent_kl
2656 (1.06x), undial 2648 (1.05x), npo 2630 (1.05x); the same command at commit 6a2c5d8, when the first two held a
reference copy: SFT 2400, SFT+retain 2470; grad_ascent_kl 3076 (1.25x), undial 3077 (1.25x), npo 2629 (1.06x)
(a second pair of runs: 1.06x, 1.08x, 1.06x after; 1.25x, 1.24x, 1.06x before).
`--methods altpo,dfmcq` (2 CPU cores under a load of 2 to 3.5, two runs): SFT 2402 / 2413, SFT+retain 2518 / 2509;
altpo 2891 (1.15x) / 2881 (1.15x), dfmcq 3227 (1.28x) / 3282 (1.31x); the same at commit ea64266, when AltPO held a
reference copy: SFT 2397 / 2398, SFT+retain 2473 / 2458; altpo 3348 (1.35x) / 3314 (1.35x), dfmcq 3224 (1.30x) /
3203 (1.30x). Against SFTTrainer on their own sequences per step (`sft+altpo`, `sft+dfmcq`: each question's truth and
1 or 4 wrong answers, and the retain rows; idle cores, two runs): altpo 1.11x / 1.13x, dfmcq 1.08x / 1.08x; since
both read the truths and the rows they carry in one forward pass (two runs): altpo 1.08x / 1.02x, dfmcq 1.05x /
1.05x.
Earlier: SFT 2424, SFT+retain 2463, SFT on IdK's refusal rows + retain 3056; grad_diff 2610 (1.06x), idk 2881
(0.94x; 1.13x against SFT on the answers' rows), npo 3058 (1.23x) while it held a reference copy; unstar 2663
(1.06x), grad_ascent 2388 (0.99x), simnpo 2679 (1.07x); before the divergence guard stopped copying the weights at
every step: unstar 3373 (1.34x), grad_diff 3427 (1.37x). RMU (`--methods rmu`, same shapes; SFT 2414): rmu 1425
(0.57x: it trains and copies only the MLPs of layers 3-5, so AdamW holds state for those alone).
"""

from __future__ import annotations

import argparse
import tempfile

from processes import in_own_process, peak_rss_mb, rss_mb  # beside this script

SHAPE = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
             num_key_value_heads=12, max_position_embeddings=128, tie_word_embeddings=False)
"""A GPT-2-small-sized Llama: 113M parameters besides the embeddings of the facts' small vocabulary."""


WRONG_PER_QUESTION = {"altpo": 1, "dfmcq": 4}
"""Wrong answers a step trains beside each forget pair's truth: AltPO's alternative, DF-MCQ's other options."""
COMPANION_BASELINES = {method: f"sft+{method}" for method in WRONG_PER_QUESTION}
"""The SFTTrainer run on the same sequences per step: each forget question with its truth and as many wrong answers
(the world's perturbed answers), and the retain rows."""


def setting(batch_size: int):
    """The forget and retain records, a tokenizer fitted on them and a random model of `SHAPE` (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from unstar_trl.testbed.embedded_world import build_world
    from unstar_trl.testbed.knowledge_model import train_tokenizer

    splits = build_world(seed=0, people=10).split_records()
    forget, retain = splits["forget"][:batch_size], splits["retain"]
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']} {' '.join(r.get('perturbed_answers', []))}"
             for r in forget + retain]
    tokenizer = train_tokenizer(texts, vocab_size=2000, max_length=128)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         **SHAPE))
    return forget, retain, tokenizer, model


def measure(method: str, steps: int, batch_size: int) -> dict:
    """Train `method` ("sft", "sft+retain" or a key of METHODS) for `steps` steps in this process; its memory
    figures, and whether it trains on retain pairs too."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from unstar_trl.method.generators import TemplateGenerator
    from unstar_trl.method.trainers import METHODS
    from unstar_trl.method.trainers.idk import drawn_refusals
    from unstar_trl.text import PLAIN_TEMPLATE, format_pair

    torch.set_num_threads(1)
    forget, retain, tokenizer, model = setting(batch_size)
    parameters = sum(parameter.numel() for parameter in model.parameters())
    common = dict(max_steps=steps, per_device_train_batch_size=batch_size, learning_rate=1e-5, report_to="none",
                  save_strategy="no", logging_steps=1, disable_tqdm=True, max_length=128, seed=0)
    with tempfile.TemporaryDirectory() as scratch:
        before = rss_mb()
        if method.startswith("sft"):
            with_retain = method != "sft"
            forget_rows = [(r["question"], r["answer"]) for r in forget]
            if method == "sft+idk":  # the refusal rows IdkTrainer trains on (one per question)
                forget_rows = [(r["question"], drawn_refusals(r, common["seed"], 1)[0]) for r in forget]
            if method in COMPANION_BASELINES.values():  # the truth and as many wrong answers per question
                wrong = next(count for name, count in WRONG_PER_QUESTION.items()
                             if COMPANION_BASELINES[name] == method)
                forget_rows += [(r["question"], answer) for r in forget for answer in r["perturbed_answers"][:wrong]]
            retain_rows = [(r["question"], r["answer"]) for r in retain[: len(forget)]] if with_retain else []
            pairs = [format_pair(question, answer, PLAIN_TEMPLATE) for question, answer in forget_rows + retain_rows]
            config = SFTConfig(output_dir=scratch, gradient_checkpointing=False, bf16=False,
                               **{**common, "per_device_train_batch_size": len(pairs)})
            trainer = SFTTrainer(model=model, args=config, train_dataset=Dataset.from_list(pairs),
                                 processing_class=tokenizer)
            trainer.train()
        else:
            trainer_class, config_class = METHODS[method]
            config = config_class(output_dir=scratch, prompt_template=PLAIN_TEMPLATE, max_entropy_share=None,
                                  **({"generator": "template", "n_paraphrases": 0, "n_wrong_answers": 1,
                                      "with_rationale": False} if method == "unstar" else {}), **common)
            trainer = trainer_class(model=model, args=config, train_dataset=forget, retain_dataset=retain,
                                    processing_class=tokenizer)
            with_retain = config.retain_weight > 0
            if method == "unstar":  # the fit alone: one round's anti-samples, one Trainer.train()
                trainer.anti_samples = TemplateGenerator(n_paraphrases=0, n_wrong_answers=1,
                                                         with_rationale=False).generate(forget)
                trainer.fit(0)
            else:
                trainer.train()
        steps_taken = trainer.state.global_step
    peak = peak_rss_mb()
    baseline = method if method.startswith("sft") else "sft+idk" if method == "idk" else COMPANION_BASELINES.get(
        method) or (
        "sft+retain" if with_retain else "sft")
    return {"method": method, "parameters": parameters, "steps": steps_taken, "peak_mb": peak,
            "growth_mb": peak - before, "baseline": baseline}


def main() -> None:
    from unstar_trl.method.trainers import METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=3, help="optimizer steps of each run")
    parser.add_argument("--batch-size", type=int, default=8, help="forget examples per step")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods to compare")
    args = parser.parse_args()
    methods = args.methods.split(",")
    plain = {name: in_own_process(measure, name, args.steps, args.batch_size)
             for name in ("sft", "sft+retain", *(["sft+idk"] if "idk" in methods else []),
                          *(COMPANION_BASELINES[method] for method in methods if method in COMPANION_BASELINES))}
    print(f"random Llama, {plain['sft']['parameters'] / 1e6:.0f}M parameters, fp32 on the CPU; {args.steps} steps of "
          f"batch {args.batch_size}; each run in its own process; x SFT: against SFTTrainer on the same sequences")
    print(f"{'trainer':<16} {'peak MB':>9} {'x SFT':>6} {'growth MB':>10} {'x SFT':>6}")
    rows = [*plain.values(), *(in_own_process(measure, method, args.steps, args.batch_size)
                               for method in methods)]
    for row in rows:
        same = plain[row["baseline"]]
        print(f"{row['method']:<16} {row['peak_mb']:9.0f} {row['peak_mb'] / same['peak_mb']:6.2f} "
              f"{row['growth_mb']:10.0f} {row['growth_mb'] / same['growth_mb']:6.2f}", flush=True)


if __name__ == "__main__":
    main()

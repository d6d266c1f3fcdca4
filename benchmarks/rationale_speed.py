"""Do misleading rationales accelerate unlearning, as the UnSTAR paper claims? On embedded worlds of several seeds,
UnSTAR runs twice from the same knowledge model with the same recipe (default world_unstar: the model writes its
own anti-samples), with and without the rationale, and the forget questions are probed after every optimizer step.
For each run: the optimizer steps and the trained anti-sample tokens (non-padding tokens of the forget batches;
the retain batches are the same size in both arms) until forget accuracy first reaches `--target`. Prints each run,
the mean of each arm and the paired difference (with - without) with 95% t intervals over the seeds.

    OMP_NUM_THREADS=1 python benchmarks/rationale_speed.py --worlds /tmp/rates --seeds 0 1 2 3 4
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from scipy import stats
from transformers import PrinterCallback, TrainerCallback

from unstar_trl.data import load_unlearning_data
from unstar_trl.method.probe import probe_accuracy
from unstar_trl.method.trainers import AntiSampleConfig, AntiSampleTrainer
from unstar_trl.models import load_model
from unstar_trl.recipes import config_from_recipe, read_recipe
from unstar_trl.testbed.world_folder import WORLD_FILE, build_world_dir


class CountingTrainer(AntiSampleTrainer):
    """An AntiSampleTrainer that counts the anti-sample tokens of the batches it trains on."""

    anti_sample_tokens = 0

    def training_step(self, model, inputs, num_items_in_batch=None):
        self.anti_sample_tokens += int(inputs["forget"]["attention_mask"].sum())
        return super().training_step(model, inputs, num_items_in_batch)


class StepsToForget(TrainerCallback):
    """After every optimizer step (on across rounds), until forget accuracy reaches `target`: probe it, and keep
    the step and the anti-sample tokens trained so far when it first does."""

    def __init__(self, trainer: CountingTrainer, forget: list[dict], target: float):
        self.trainer, self.forget, self.target = trainer, forget, target
        self.step, self.reached = 0, None

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.step += 1
        if self.reached is None and probe_accuracy(model, self.trainer.processing_class, self.forget,
                                                   args.prompt_template) <= self.target:
            self.reached = {"steps": self.step, "tokens": self.trainer.anti_sample_tokens}


def steps_to_forget(world: Path, with_rationale: bool, target: float, recipe: str, max_rounds: int) -> dict | None:
    """{"steps", "tokens"} when forget accuracy reached `target`, else None."""
    data = load_unlearning_data(world / "data")
    model, tokenizer = load_model(world / "model")
    with tempfile.TemporaryDirectory() as scratch:
        config = config_from_recipe(AntiSampleConfig, read_recipe(recipe), output_dir=scratch, disable_tqdm=True,
                                    with_rationale=with_rationale, max_rounds=max_rounds, forget_acc_target=target)
        trainer = CountingTrainer(model=model, args=config, processing_class=tokenizer, train_dataset=data.forget,
                                  retain_dataset=data.retain)
        callback = StepsToForget(trainer, data.forget, target)
        trainer.add_callback(callback)
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return callback.reached


def interval(values: list[float]) -> str:
    """Mean and 95% t interval."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return f"{mean:.1f}"
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return f"{mean:.1f} [{mean - half:.1f}, {mean + half:.1f}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--worlds", required=True, help="folder of the worlds (seed-<k>, built when missing)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="world seeds")
    parser.add_argument("--people", type=int, default=20)
    parser.add_argument("--target", type=float, default=0.0, help="forget accuracy to reach")
    parser.add_argument("--recipe", default="world_unstar", help="the UnSTAR recipe both arms run")
    parser.add_argument("--max-rounds", type=int, default=8, help="rounds at most (the recipe's 4 may not reach)")
    args = parser.parse_args()
    runs = {}
    for seed in args.seeds:
        world = Path(args.worlds) / f"seed-{seed}"
        if not (world / WORLD_FILE).is_file():
            build_world_dir(world, seed=seed, people=args.people, progress=False)
        for with_rationale in (True, False):
            runs[seed, with_rationale] = steps_to_forget(world, with_rationale, args.target, args.recipe,
                                                         args.max_rounds)
            print(f"world seed {seed}, rationale {with_rationale}: {runs[seed, with_rationale]}", flush=True)
    print(f"forget accuracy <= {args.target}, world seeds {args.seeds}, recipe {args.recipe}, 95% t intervals:")
    for with_rationale in (True, False):
        reached = [runs[seed, with_rationale] for seed in args.seeds if runs[seed, with_rationale]]
        steps, tokens = ([r[unit] for r in reached] for unit in ("steps", "tokens"))
        print(f"  rationale {with_rationale}: reached in {len(reached)}/{len(args.seeds)}; steps {interval(steps)}; "
              f"anti-sample tokens {interval(tokens)}")
    both = [seed for seed in args.seeds if runs[seed, True] and runs[seed, False]]
    for unit in ("steps", "tokens"):
        differences = [runs[seed, True][unit] - runs[seed, False][unit] for seed in both]
        if differences:
            print(f"  with - without rationale, {unit} (paired, {len(both)} seeds): {interval(differences)}")


if __name__ == "__main__":
    main()

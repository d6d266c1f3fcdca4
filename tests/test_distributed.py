"""`unstar unlearn` with 2 CPU processes, under torchrun and under accelerate launch: DDP splits the batches, rank 0
alone writes the output; and the frozen reference of the methods that need one, prepared for the run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _unlearn(launcher: list[str], world_dir: Path, out: Path) -> subprocess.CompletedProcess:
    """Runs one round of `unstar unlearn` on the CPU under `launcher` (which ends with its own `-m`)."""
    command = [*launcher, "unstar_trl.cli", "unlearn", "--config", str(RECIPES / "world_unstar.yaml"),
               "--model_name_or_path", str(world_dir / "model"), "--data_dir", str(world_dir / "data"),
               "--output_dir", str(out), "--use_cpu", "true", "--max_rounds", "1",
               "--per_device_train_batch_size", "8", "--learning_rate", "1e-3",  # one round moves any tests' world
               "--forget_probe_every", "1000"]  # the recipe's stopping rule would end the round early on some worlds
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def _check_two_ranks(done: subprocess.CompletedProcess, tmp_path: Path, out: Path) -> None:
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("unstar: forget ") == 1  # rank 0 reports, rank 1 stays quiet
    report = json.loads((out / "unlearn_report.json").read_text())
    samples = (out / "anti_samples.jsonl").read_text().splitlines()
    # two ranks of 8 share each optimizer step: 2 epochs over the anti-samples take ceil(n / 16) steps each
    assert report["steps"] == 2 * -(-len(samples) // 16)
    assert report["after"]["forget_acc"] < report["before"]["forget_acc"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no staging folder left beside it


def test_unstar_under_two_cpu_processes(world_dir, tmp_path):
    out = tmp_path / "out"
    done = _unlearn([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m"], world_dir, out)
    _check_two_ranks(done, tmp_path, out)


def test_unstar_under_accelerate_launch_two_cpu_processes(world_dir, tmp_path):
    out = tmp_path / "out"
    config = RECIPES / "accelerate" / "cpu_2proc.yaml"
    done = _unlearn([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), "-m"],
                    world_dir, out)
    _check_two_ranks(done, tmp_path, out)


REFERENCE_RUN = """
import os, sys, torch
from unstar_trl.data import load_unlearning_data
from unstar_trl.method.trainers import {trainer}, {config}, base

world, output_dir, held = sys.argv[1:]
if held == "copy":  # whatever the sizes (else the world's small vocabulary makes a table of logits the smaller)
    base.prefer_table = lambda model, rows: False
data = load_unlearning_data(world + "/data")
config = {config}(output_dir=output_dir, max_steps=2, per_device_train_batch_size=4, learning_rate=1e-3, seed=0,
                  use_cpu=True, disable_tqdm=True, max_forget_nll=None, max_entropy_share=None{extra})
trainer = {trainer}(world + "/model", config, train_dataset=data.forget, retain_dataset=data.retain)
if held == "table":
    table = trainer.reference_tables["retain"].values.clone()
    trainer.train()
    assert trainer.ref_model is None and torch.equal(table, trainer.reference_tables["retain"].values)
    assert trainer.history[-1]["retain_kl"] > 0, trainer.history
    os.write(1, f"rank {{trainer.accelerator.process_index}} reference frozen\\n".encode())
    sys.exit()
reference = trainer.ref_model
start = {{name: parameter.detach().clone() for name, parameter in reference.named_parameters()}}
trainer.train()
model = trainer.accelerator.unwrap_model(trainer.model)
assert trainer.accelerator.num_processes == 2 and type(trainer.model_wrapped).__name__ == "DistributedDataParallel"
assert reference is trainer.ref_model and not isinstance(reference, torch.nn.parallel.DistributedDataParallel)
assert not reference.training and not any(p.requires_grad for p in reference.parameters())
assert all(torch.equal(start[name], p) for name, p in reference.named_parameters()), "the reference moved"
assert any(not torch.equal(start[name], p) for name, p in model.named_parameters()), "the model did not move"
os.write(1, f"rank {{trainer.accelerator.process_index}} reference frozen\\n".encode())  # one write: ranks never interleave
"""


@pytest.mark.parametrize("trainer, config, extra, held", [
    ("NPOTrainer", "NPOConfig", ", retain_loss_type='kl'", "copy"),  # alone NPO holds no reference (test_baselines)
    ("GradDiffTrainer", "GradDiffConfig", ", retain_loss_type='kl'", "copy"),
    ("GradDiffTrainer", "GradDiffConfig", ", retain_loss_type='kl'", "table"),
])
def test_the_frozen_reference_under_two_cpu_processes(world_dir, tmp_path, trainer, config, extra, held):
    """Full fine-tuning with a reference (a KL retain term: NPO's, GradDiff's) under DDP: a held copy is placed
    once per process, unwrapped (never trained) and unchanged by the run, while the model trains; a table of its
    logits on the retain rows (each process holds the whole model, so each computes it before training) is
    unchanged by the run, and the KL term reads it."""
    script = tmp_path / "reference_run.py"
    script.write_text(REFERENCE_RUN.format(trainer=trainer, config=config, extra=extra))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                           str(world_dir), str(tmp_path / "out"), held], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    # each rank's line is one write, but another process's output may share its line
    assert sorted(re.findall(r"rank (\d) reference frozen", done.stdout)) == ["0", "1"]


def test_a_reference_is_never_a_copy_of_weights_this_process_does_not_hold(world_dir, monkeypatch):
    """What cannot run here (DeepSpeed, FSDP on GPUs) on a stand-in trainer: ranks > 0 under FSDP's
    cpu_ram_efficient_loading hold meta tensors, refused; under ZeRO-3 the reference is loaded again from the
    model's folder (a copy of partitions would be empty), and refused without one."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from unstar_trl.method.trainers import reference

    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(world_dir / "model"))
    with pytest.raises(ValueError, match="^the frozen reference would copy weights this process does not hold"):
        reference.reference_copy(meta, str(world_dir / "model"))
    monkeypatch.setattr(reference, "is_deepspeed_zero3_enabled", lambda: True)
    loaded = reference.reference_copy(meta, str(world_dir / "model"))
    expected = AutoModelForCausalLM.from_pretrained(world_dir / "model")
    assert all(torch.equal(parameter, dict(expected.named_parameters())[name])
               for name, parameter in loaded.named_parameters())
    assert not loaded.training and not any(parameter.requires_grad for parameter in loaded.parameters())
    with pytest.raises(ValueError, match="under DeepSpeed ZeRO-3 is loaded again from the model's folder"):
        reference.reference_copy(meta, "org/hub-model")

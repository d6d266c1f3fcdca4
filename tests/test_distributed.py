"""`unstar unlearn` with 2 CPU processes, under torchrun and under accelerate launch: DDP splits the batches, rank 0
alone writes the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def _unlearn(launcher: list[str], world_dir: Path, out: Path) -> subprocess.CompletedProcess:
    """Runs one round of `unstar unlearn` on the CPU under `launcher` (which ends with its own `-m`)."""
    command = [*launcher, "unstar_trl.cli", "unlearn", "--config", str(RECIPES / "world_unstar.yaml"),
               "--model_name_or_path", str(world_dir / "model"), "--data_dir", str(world_dir / "data"),
               "--output_dir", str(out), "--use_cpu", "true", "--max_rounds", "1",
               "--per_device_train_batch_size", "8"]
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

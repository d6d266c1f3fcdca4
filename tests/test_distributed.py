"""`unstar unlearn` under torchrun with 2 CPU processes: DDP splits the batches, rank 0 alone writes the output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def test_unstar_under_two_cpu_processes(world_dir, tmp_path):
    out = tmp_path / "out"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "unstar_trl.cli",
               "unlearn", "--config", str(RECIPES / "world_unstar.yaml"), "--model_name_or_path",
               str(world_dir / "model"), "--data_dir", str(world_dir / "data"), "--output_dir", str(out),
               "--use_cpu", "true", "--max_rounds", "1", "--per_device_train_batch_size", "8"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("unstar: forget_acc") == 1  # rank 0 reports, rank 1 stays quiet
    report = json.loads((out / "unlearn_report.json").read_text())
    samples = (out / "anti_samples.jsonl").read_text().splitlines()
    # two ranks of 8 share each optimizer step: 2 epochs over the anti-samples take ceil(n / 16) steps each
    assert report["steps"] == 2 * -(-len(samples) // 16)
    assert report["after"]["forget_acc"] < report["before"]["forget_acc"]
    assert [path.name for path in tmp_path.iterdir()] == ["out"]  # no staging folder left beside it

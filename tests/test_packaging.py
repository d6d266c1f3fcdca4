"""The wheel: built from the checkout, installed (not editable) into a fresh venv, and used from outside the checkout:
every subpackage, the lm-eval tasks and the recipes must be in it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv holding only the wheel of the checkout; its dependencies are this interpreter's (added as a
    plain path, so that no editable-install hook of this environment comes with them)."""
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(root / "dist"), str(ROOT)], check=True, capture_output=True)
    wheel = next((root / "dist").glob("unstar_trl-*.whl"))
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = Path(subprocess.check_output([venv / "bin" / "python", "-c",
                                         "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True)
                .strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--no-deps",
                    "--no-index", "-q", str(wheel)], check=True, capture_output=True)
    return venv


def run(venv: Path, *argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_wheel_works_outside_the_checkout(venv, world_dir, tmp_path):
    found = run(venv, "python", "-c", "import json, unstar_trl, unstar_trl.recipes as r; print(json.dumps("
                "[unstar_trl.__file__, r.method_recipe('unstar')]))", cwd=tmp_path)
    module, recipe = json.loads(found.stdout)
    assert Path(module).is_relative_to(venv), module  # the wheel's copy, not the checkout's
    assert recipe["method"] == "unstar"

    assert run(venv, "unstar", "--help", cwd=tmp_path).returncode == 0
    tasks = Path(run(venv, "unstar", "tasks-path", cwd=tmp_path).stdout.strip())
    assert tasks.is_relative_to(venv) and (tasks / "unstar_forget_qa.yaml").is_file() and (tasks / "utils.py").is_file()

    out = tmp_path / "out"
    unlearn = run(venv, "unstar", "unlearn", "--config", "world_grad_ascent", "--model_name_or_path",
                  str(world_dir / "model"), "--data_dir", str(world_dir / "data"), "--output_dir", str(out),
                  "--max_steps", "2", "--disable_tqdm", "true", cwd=tmp_path)
    assert unlearn.returncode == 0, unlearn.stderr[-2000:]
    report = json.loads((out / "unlearn_report.json").read_text())
    assert report["config"]["recipe"].endswith("world_grad_ascent.yaml") and Path(report["config"]["recipe"]
                                                                                 ).is_relative_to(venv)
    assert report["steps"] == 2

    evaluated = run(venv, "unstar", "eval", "--model", str(out), "--data-dir", str(world_dir / "data"), "--tasks",
                    "unstar_forget_qa", "--limit", "4", cwd=tmp_path)
    assert evaluated.returncode == 0 and "|unstar_forget_qa|" in evaluated.stdout, evaluated.stderr[-2000:]

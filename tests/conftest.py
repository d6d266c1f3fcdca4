"""Shared fixtures: one small world and knowledge model, built once per test session (also under xdist)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from filelock import FileLock

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
TEST_PEOPLE = 20
TEST_SEED = 0


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory) -> Path:
    """A world of 20 people with its trained knowledge model: DIR/data/<split>.jsonl, DIR/model, DIR/world.json."""
    from unstar_trl.testbed.world_folder import build_world_dir

    import hashlib

    import unstar_trl

    package = Path(unstar_trl.__file__).parent
    sources = [package / name for name in ("testbed/embedded_world.py", "testbed/knowledge_model.py",
                                           "testbed/world_folder.py", "method/probe.py", "text.py")]
    digest = hashlib.sha256(b"".join(source.read_bytes() for source in sources)).hexdigest()[:12]
    root = tmp_path_factory.getbasetemp().parent  # shared by xdist workers (and by runs, keyed by the sources)
    path = root / f"world-{TEST_SEED}-{TEST_PEOPLE}-{digest}"
    with FileLock(str(path) + ".lock"):
        if not (path / "world.json").exists():
            build_world_dir(path, seed=TEST_SEED, people=TEST_PEOPLE, progress=False)
    return path


@pytest.fixture(scope="session")
def world_summary(world_dir) -> dict:
    return json.loads((world_dir / "world.json").read_text())


@pytest.fixture(scope="session")
def tofu_dir() -> Path:
    path = SHARED_DATA / "tofu"
    if not path.is_dir():
        pytest.fail(f"TOFU data not found at {path}; the project expects ../shared beside its checkout")
    return path


if os.environ.get("PYTEST_XDIST_WORKER"):
    import torch

    torch.set_num_threads(1)  # one core per xdist worker

"""The knowledge model's sizes: each builds a model of its documented parameter count, and `--model-size` of
`unstar world` and `unstar bench` reaches the world builder (no m or l is trained here)."""

from __future__ import annotations

import json

import pytest

from unstar_trl.cli import main
from unstar_trl.testbed import world_folder
from unstar_trl.testbed.embedded_world import BENCH_PEOPLE, build_world, training_texts
from unstar_trl.testbed.knowledge_model import build_model, count_parameters, tokenizer_for
from unstar_trl.testbed.model_sizes import MODEL_SIZES, PARAMETERS, size_config


@pytest.fixture(scope="module")
def world_texts():
    return training_texts(build_world(0, BENCH_PEOPLE))


@pytest.mark.parametrize("size", sorted(MODEL_SIZES))
def test_each_size_builds_a_model_of_its_documented_parameter_count(size, world_texts):
    config = size_config(size)
    model = build_model(tokenizer_for(world_texts, config), config)
    assert abs(count_parameters(model) - PARAMETERS[size]) <= 0.2 * PARAMETERS[size], count_parameters(model)


def test_sizes_grow_and_s_is_todays_model():
    counts = [PARAMETERS[size] for size in ("s", "m", "l")]
    assert counts == sorted(counts) and len(set(counts)) == 3
    assert size_config("s") == world_folder.KnowledgeModelConfig()  # s's shape and schedule are the defaults
    with pytest.raises(ValueError, match="unknown model size 'xl'"):
        size_config("xl")


def _untrained(jobs, side_by_side=True):
    """Stand-in for the two trainings of a world: each job's config builds its model, nothing is trained."""
    return [(0, {"forget": 0.0, "retain": 0.0}, count_parameters(build_model(tokenizer, config)))
            for _, _, config, tokenizer, *_ in jobs]


def test_world_model_size_reaches_the_builder_and_world_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(world_folder, "_train_side_by_side", _untrained)
    out = tmp_path / "world"
    assert main(["world", "--output-dir", str(out), "--people", "10", "--model-size", "m"]) == 0
    written = json.loads((out / "world.json").read_text())
    assert written["model_size"] == "m"
    assert abs(written["parameters"] - PARAMETERS["m"]) <= 0.2 * PARAMETERS["m"]
    assert "size m" in capsys.readouterr().out


def test_bench_model_size_reaches_the_builder_and_must_agree_with_a_reused_world(tmp_path, monkeypatch, capsys):
    import unstar_trl.evaluation.bench_runner as bench_runner

    built = {}

    def fake_run_bench(worlds, methods, output_dir, *, settings):
        built.update(worlds[0].build.keywords)
        (tmp_path / "bench" / "results.md").parent.mkdir(exist_ok=True)
        (tmp_path / "bench" / "results.md").write_text("")

    monkeypatch.setattr(bench_runner, "run_bench", fake_run_bench)
    assert main(["bench", "--output-dir", str(tmp_path / "bench"), "--model-size", "l", "--quick"]) == 0
    assert built["model_size"] == "l" and built["people"] == BENCH_PEOPLE
    world = tmp_path / "old"
    world.mkdir()
    (world / "world.json").write_text(json.dumps({"people": 24}))  # a world from before sizes: size s
    assert main(["bench", "--world", str(world), "--output-dir", str(tmp_path / "b2"), "--model-size", "m"]) == 2
    assert "(model size s)" in capsys.readouterr().err

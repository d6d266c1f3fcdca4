"""benchmarks/capacity.py --quick on the tests' world: the table, the plot and the per-size sweep's rates."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def capacity():
    if str(BENCHMARKS) not in sys.path:
        sys.path.append(str(BENCHMARKS))  # as Python runs it: sweep.py beside it
    return importlib.import_module("capacity")


def test_quick_capacity_writes_a_table_and_plot_per_size(capacity, world_dir, tmp_path, capsys,
                                                          monkeypatch):
    worlds = tmp_path / "worlds"
    for name in ("sweep", "seed-0"):  # the tests' world stands in for both (it is only read)
        (worlds / "s").mkdir(parents=True, exist_ok=True)
        (worlds / "s" / name).symlink_to(world_dir, target_is_directory=True)
    out = tmp_path / "capacity"
    capacity.main(["--sizes", "s", "--worlds", "1", "--rows", "grad_ascent,npo", "--quick", "--output-dir", str(out),
                   "--worlds-dir", str(worlds)])
    written = json.loads((out / "capacity.json").read_text())
    assert set(written["sizes"]["s"]["rates"].values()) <= set(capacity.QUICK_GRID)
    assert written["sizes"]["s"]["parameters"] == json.loads((world_dir / "world.json").read_text())["parameters"]
    assert [(entry["size"], entry["row"]) for entry in written["table"]] == [
        ("s", "target"), ("s", "retain_model"), ("s", "grad_ascent"), ("s", "npo")]
    for entry in written["table"]:
        for column in capacity.REMOVAL + capacity.KEEPING:
            assert entry[column] is None or 0.0 <= entry[column] <= 1.0, (entry["row"], column)
    target, retain_model, npo = written["table"][0], written["table"][1], written["table"][3]
    assert retain_model["forget_acc"] < target["forget_acc"]  # the retain model never saw the forget facts
    assert npo["forget_acc"] < target["forget_acc"]  # the quick run removed something
    assert (out / "capacity.png").read_bytes().startswith(PNG)
    report = (out / "capacity.md").read_text()
    assert "| s | " in report and "| npo |" in report and "| grad_ascent |" in report
    assert (out / "s" / "world-0" / "results.json").is_file()

    # run again with a row more: the sweep and the world's bench of the first two are read back, the third alone runs
    import sweep

    from unstar_trl.evaluation import bench_runner

    calls = []

    def recorded(function):
        def call(*args, **kwargs):
            calls.append((function.__name__, list(args[1])))  # (the world, the rows, ...)
            return function(*args, **kwargs)
        return call

    monkeypatch.setattr(sweep, "sweep", recorded(sweep.sweep))
    monkeypatch.setattr(bench_runner, "run_bench", recorded(bench_runner.run_bench))
    capacity.main(["--sizes", "s", "--worlds", "1", "--rows", "grad_ascent,npo,simnpo", "--quick", "--output-dir",
                   str(out), "--worlds-dir", str(worlds)])
    assert calls == [("sweep", ["simnpo"]), ("run_bench", ["simnpo"])]
    again = json.loads((out / "capacity.json").read_text())["table"]
    assert [entry["row"] for entry in again] == ["target", "retain_model", "grad_ascent", "npo", "simnpo"]
    assert again[:4] == written["table"]  # the rows read back are the first run's
    assert (out / "s" / "world-0" / "simnpo" / "results.json").is_file()
    assert "reusing grad_ascent, npo from" in capsys.readouterr().out


def test_a_world_of_another_size_is_refused(capacity, tmp_path):
    world = tmp_path / "worlds" / "s" / "sweep"
    world.mkdir(parents=True)
    (world / "world.json").write_text(json.dumps({"model_size": "m"}))
    with pytest.raises(SystemExit, match="holds a size-m world, not s"):
        capacity.main(["--sizes", "s", "--worlds", "1", "--output-dir", str(tmp_path / "out"),
                       "--worlds-dir", str(tmp_path / "worlds")])
    with pytest.raises(SystemExit, match="--sizes takes s, m, l"):
        capacity.main(["--sizes", "xl", "--output-dir", str(tmp_path / "out")])

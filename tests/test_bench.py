"""`unstar bench --quick`: every output file, every key per method, numbers in range."""

from __future__ import annotations

import json

from unstar_trl.evaluation.bench_runner import RESULT_KEYS
from unstar_trl.cli import main
from unstar_trl.io import fingerprint

METHODS = ("grad_ascent", "unstar")
ACCURACIES = ("forget_acc", "paraphrase_acc", "retain_acc", "neighbor_acc", "targeted_acc", "sibling_acc",
              "mcq_probe_acc", "mia_auc", "relearn_acc")
PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_bench(world_dir, tmp_path, capsys):
    untouched = fingerprint(world_dir)
    out = tmp_path / "bench"
    assert main(["bench", "--world", str(world_dir), "--methods", ",".join(METHODS), "--output-dir", str(out),
                 "--quick"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert list(results["methods"]) == list(METHODS)
    for name, entry in [("target", results["target"]), *results["methods"].items()]:
        assert set(RESULT_KEYS) <= set(entry), name
        for key in ACCURACIES:
            assert 0.0 <= entry[key] <= 1.0, (name, key, entry[key])
        assert entry["peak_rss_mb"] > 0
    for name, entry in results["methods"].items():
        assert entry["steps"] >= 1 and entry["seconds"] > 0 and entry["tokens_per_second"] > 0, name
        assert results["curves"][name][0]["step"] == 0 and results["curves"][name][-1]["step"] == entry["steps"]
    assert results["methods"]["grad_ascent"]["forget_acc"] < results["target"]["forget_acc"]
    table = (out / "results.md").read_text()
    assert all(f"| {method} |" in table for method in METHODS) and "| target" in table
    for plot in ("forget_retain_over_steps.png", "methods.png"):
        assert (out / plot).read_bytes().startswith(PNG)
    assert not [path.name for path in out.iterdir() if path.name.startswith(".")]  # no temporary files left
    assert fingerprint(world_dir) == untouched
    assert "results.md" in capsys.readouterr().out


def test_unknown_method_is_one_line(world_dir, tmp_path, capsys):
    code = main(["bench", "--world", str(world_dir), "--methods", "grad_ascent,nope", "--output-dir",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "nope" in err
    assert not (tmp_path / "out").exists()


def test_quick_bench_on_tofu(tofu_dir, tmp_path, capsys):
    from unstar_trl.testbed.tofu_world import build_tofu_world_dir

    world = tmp_path / "tofu-world"
    summary = build_tofu_world_dir(world, tofu_dir, authors=3, epochs=20, progress=False)
    assert summary["splits"] == {"forget": 40, "targeted": 2, "retain": 20, "holdout": 40}
    forget = [json.loads(line) for line in (world / "data" / "forget.jsonl").read_text().splitlines()]
    assert {record["author"] for record in forget} == {180, 181}  # TOFU's forget01 authors, their real rows
    assert summary["accuracy"]["forget"] >= 0.5 and summary["accuracy"]["holdout"] == 0.0
    out = tmp_path / "bench"
    # the bench reads the world it is given: its kind and size come from its world.json
    assert main(["bench", "--world", str(world), "--methods", "grad_ascent,unstar", "--output-dir", str(out),
                 "--quick"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["target"]["forget_acc"] == summary["accuracy"]["forget"]
    for name, entry in [("target", results["target"]), *results["methods"].items()]:
        for key in ACCURACIES:
            if key != "neighbor_acc":  # TOFU has no neighbour split
                assert 0.0 <= entry[key] <= 1.0, (name, key, entry[key])
    assert results["methods"]["grad_ascent"]["forget_acc"] < results["target"]["forget_acc"]
    capsys.readouterr()
    # the world folder holds a 3-author TOFU world: asking it for another world is refused, in one line
    for argv in (["--authors", "4", "--data", "tofu", "--data-dir", str(tofu_dir)], ["--data", "world"],
                 ["--people", "20"]):
        assert main(["bench", "--world", str(world), "--output-dir", str(tmp_path / "no"), *argv]) != 0
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "holds a tofu world of 3 authors" in err, err
    assert not (tmp_path / "no").exists()

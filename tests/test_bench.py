"""`unstar bench --quick`: the results.json contract, every output file, numbers in range."""

from __future__ import annotations

import json

import pytest

from unstar_trl.cli import main
from unstar_trl.data import load_unlearning_data
from unstar_trl.evaluation.bench_runner import COLUMNS, SPLIT
from unstar_trl.io import OUTPUT_MARKER, check_output_folder, fingerprint

METHODS = ("grad_ascent", "unstar")
SHARES = ("forget_acc", "paraphrase_acc", "retain_heldout_acc", "neighbor_acc", "targeted_acc", "sibling_heldout_acc",
          "mcq_acc", "mcq_chance", "mcq_entropy", "truth_ratio", "forget_quality", "mia_auc", "relearn_acc",
          "quant4_forget_acc")
PNG = b"\x89PNG\r\n\x1a\n"


def test_quick_bench(world_dir, tmp_path, capsys):
    untouched = fingerprint(world_dir)
    out = tmp_path / "bench"
    assert main(["bench", "--world", str(world_dir), "--methods", ",".join(METHODS), "--output-dir", str(out),
                 "--quick"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert {"settings", "seeds", "target", "retain_model", "methods", "worlds"} <= set(results)
    assert list(results["methods"]) == list(METHODS) and results["seeds"] == [0]
    # a one-world bench: its one world's rows are the rows over all worlds, with the one-world intervals
    (world,) = results["worlds"]
    assert world["folder"] == str(world_dir) and world["seed"] == json.loads((world_dir / "world.json").read_text())[
        "seed"]
    for name in ("target", "retain_model"):
        assert world[name] == {**results[name], "per_seed": [{key: value for key, value in run.items() if key != "world"}
                                                             for run in results[name]["per_seed"]]}
    rows = [("target", results["target"]), ("retain_model", results["retain_model"]), *results["methods"].items()]
    for name, entry in rows:
        assert set(COLUMNS) | {"ci95", "per_seed"} <= set(entry), name
        for key in SHARES:
            assert 0.0 <= entry[key] <= 1.0, (name, key, entry[key])
            low, high = entry["ci95"][key]
            assert low <= entry[key] + 1e-9 and entry[key] <= high + 1e-9, (name, key)
        assert entry["peak_rss_mb"] > 0 and len(entry["per_seed"]) == 1
    assert results["retain_model"]["privleak"] == 0 and results["retain_model"]["forget_quality"] == 1.0
    assert results["target"]["forget_quality"] < 0.05  # the reference tells a model that knows from one that never did
    assert abs(results["retain_model"]["mia_auc"] - 0.5) <= 0.3  # never saw either side (14 vs 28 facts: wide)
    assert results["methods"]["grad_ascent"]["planted_share"] is None  # taught no wrong answer
    assert results["methods"]["grad_ascent"]["distractor_share"] is None
    unstar = results["methods"]["unstar"]
    assert 0 <= unstar["planted_share"] <= 1 and 0 <= unstar["distractor_share"] <= 1
    assert unstar["planted_share"] + 3 * unstar["distractor_share"] <= 1 + 1e-6  # beside the truth, 3 distractors
    for name, entry in results["methods"].items():
        assert entry["steps"] >= 1 and entry["seconds"] > 0 and entry["trained_tokens"] > 0, name
        assert sum(entry[column] for column in SPLIT) == pytest.approx(entry["seconds"], abs=0.05), name
        assert results["curves"][name][0]["step"] == 0 and results["curves"][name][-1]["step"] == entry["steps"]
    assert "\n## Where the seconds go\n" in (out / "results.md").read_text()
    assert results["methods"]["grad_ascent"]["forget_acc"] < results["target"]["forget_acc"]
    # the audit of the anti-sample run is kept, and nothing it fitted is an evaluation distractor
    data = load_unlearning_data(world_dir / "data")
    distractors = {record["id"]: set(record["eval_distractors"]) for record in data.forget}
    audit = [json.loads(line) for line in (out / "runs" / world_dir.name / "unstar" / "seed-0" /
                                           "anti_samples.jsonl").open()]
    assert audit and not [row for row in audit if row["wrong_answer"] in distractors[row["source_id"]]]
    report = (out / "results.md").read_text()
    assert all(f"| {method} |" in report for method in METHODS) and "| retain model" in report
    for plot in ("forget_retain_over_steps.png", "methods.png", "forget_vs_kept.png"):
        assert (out / plot).read_bytes().startswith(PNG)
    assert not [path.name for path in out.iterdir() if path.name.startswith(".") and path.name != OUTPUT_MARKER]
    check_output_folder(out, "bench")  # marked as a bench's and holding nothing else: a bench may rewrite it
    assert fingerprint(world_dir) == untouched
    assert "results.md" in capsys.readouterr().out


def test_unknown_method_is_one_line(world_dir, tmp_path, capsys):
    code = main(["bench", "--world", str(world_dir), "--methods", "grad_ascent,nope", "--output-dir",
                 str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code != 0 and len(err.splitlines()) == 1 and "nope" in err
    assert not (tmp_path / "out").exists()


def test_a_tofu_world_forgets_forget01_and_keeps_the_first_retain_authors(tofu_dir):
    from unstar_trl.data import DataError
    from unstar_trl.testbed.tofu_world import tofu_world_splits

    splits = tofu_world_splits(tofu_dir, authors=5, seed=0)
    assert {name: len(records) for name, records in splits.items()} == {
        "forget": 40, "retain": 58, "targeted": 2, "holdout": 40}
    author_of = lambda name: {record["author"] for record in splits[name]}  # noqa: E731
    assert (author_of("forget"), author_of("retain"), author_of("holdout")) == ({180, 181}, {0, 1, 2}, {18, 19})
    retain = {record["id"]: record for record in splits["retain"]}
    for targeted in splits["targeted"]:  # one row of each of the first two authors, the author's other rows kept
        siblings = [id for id, record in retain.items() if record["author"] == targeted["author"]]
        assert targeted["id"] not in retain and targeted["siblings"] == siblings and len(siblings) == 19
        assert sum(retain[id].get("eval_only", False) for id in siblings) == 9
    assert sum(record.get("eval_only", False) for record in retain.values() if record["author"] == 2) == 6
    for authors, message in [(2, "--authors must be at least 3"), (21, "--authors can be at most 20")]:
        with pytest.raises(DataError, match=message):
            tofu_world_splits(tofu_dir, authors=authors)


def test_quick_bench_on_tofu(real_tofu_dir, tmp_path, capsys):
    """On the real TOFU rows: their long answers are what a model never taught them cannot guess."""
    from unstar_trl.testbed.tofu_world import build_tofu_world_dir

    tofu_dir = real_tofu_dir

    world = tmp_path / "tofu-world"
    summary = build_tofu_world_dir(world, tofu_dir, authors=3, progress=False)
    assert summary["splits"] == {"forget": 40, "retain": 19, "targeted": 1, "holdout": 40}
    forget = [json.loads(line) for line in (world / "data" / "forget.jsonl").read_text().splitlines()]
    assert {record["author"] for record in forget} == {180, 181}  # TOFU's forget01 authors, their real rows
    known, reference = summary["model"]["accuracy"], summary["retain_model"]["accuracy"]
    assert min(known[split] for split in ("forget", "retain", "targeted")) >= 0.97  # trained until it knows them
    assert known["holdout"] == 0.0 and reference["forget"] <= 0.1 and reference["retain"] >= 0.97
    out = tmp_path / "bench"
    # the bench reads the world it is given: its kind and size come from its world.json
    assert main(["bench", "--world", str(world), "--methods", "grad_ascent,unstar", "--output-dir", str(out),
                 "--quick"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["target"]["forget_acc"] == known["forget"]
    for name, entry in [("target", results["target"]), *results["methods"].items()]:
        assert entry["neighbor_acc"] is None  # TOFU has no neighbour split
        for key in SHARES:
            if key != "neighbor_acc":
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


def test_a_worlds_two_models_are_the_same_trained_side_by_side_or_in_turn(tmp_path, monkeypatch):
    """With two cores the knowledge model and the retain model train in processes of their own, on one thread
    each: the weights (and world.json) are those of training them one after the other in this process."""
    from unstar_trl.testbed import world_folder
    from unstar_trl.testbed.embedded_world import build_world, training_texts
    from unstar_trl.testbed.model_sizes import KnowledgeModelConfig

    if world_folder.cores() < 2:
        pytest.skip("one core: the models are always trained in turn")
    world = build_world(seed=3, people=10)
    config = KnowledgeModelConfig(hidden_size=64, intermediate_size=128, epochs=2, accuracy_bar=0.0, seed=3)

    def build(folder):
        return world_folder.write_world_dir(
            folder, world.split_records(), config, about={}, progress=False,
            model=world_folder.Training(training_texts(world), {}),
            retain_model=world_folder.Training(training_texts(world, leave_out=world.removed), {}))

    side = build(tmp_path / "side")
    monkeypatch.setattr(world_folder, "cores", lambda: 1)
    in_turn = build(tmp_path / "in-turn")
    for name in ("model", "retain_model"):
        assert side[name] == in_turn[name]
        weights = [(tmp_path / folder / name / "model.safetensors").read_bytes() for folder in ("side", "in-turn")]
        assert weights[0] == weights[1], name


def tiny_world(folder, *, seed: int, people: int, model_size: str = "s", progress: bool = True,
               side_by_side: bool = True) -> dict:
    """What `build_world_dir` writes, with a model of a few seconds whatever `model_size` (it learns little: the
    bench's figures are not what the test asks about). Module-level, so that the bench's processes import it."""
    from unstar_trl.testbed import world_folder
    from unstar_trl.testbed.embedded_world import SKILL_PROMPTS, build_world, training_texts
    from unstar_trl.testbed.model_sizes import KnowledgeModelConfig

    world = build_world(seed, people)
    config = KnowledgeModelConfig(hidden_size=64, intermediate_size=128, epochs=3, accuracy_bar=0.0, seed=seed)
    return world_folder.write_world_dir(
        folder, world.split_records(), config, about={"seed": seed, "people": people}, progress=progress,
        skill_prompts=SKILL_PROMPTS, side_by_side=side_by_side,
        model=world_folder.Training(training_texts(world), {}),
        retain_model=world_folder.Training(training_texts(world, leave_out=world.removed), {}))


def test_a_bench_over_two_worlds_builds_each_and_draws_its_intervals_over_both(tmp_path, capsys, monkeypatch):
    """`--worlds 0,1`: each world its own folder, knowledge model and retain model (built side by side); results.json's
    rows are the means over the worlds, each world keeps its own, and the intervals are drawn over worlds, facts and
    seeds."""
    from unstar_trl.testbed import world_folder

    monkeypatch.setattr(world_folder, "build_world_dir", tiny_world)
    out = tmp_path / "bench"
    assert main(["bench", "--worlds", "0,1", "--people", "10", "--methods", "grad_ascent,npo", "--output-dir",
                 str(out), "--quick"]) == 0
    capsys.readouterr()
    results = json.loads((out / "results.json").read_text())
    assert [(world["seed"], world["folder"]) for world in results["worlds"]] == [
        (seed, str(out / "worlds" / str(seed))) for seed in (0, 1)]
    for seed in (0, 1):
        folder = out / "worlds" / str(seed)
        assert {"data", "model", "retain_model", "world.json"} <= {path.name for path in folder.iterdir()}
        assert json.loads((folder / "world.json").read_text())["seed"] == seed
    weights = [(out / "worlds" / str(seed) / "model" / "model.safetensors").read_bytes() for seed in (0, 1)]
    assert weights[0] != weights[1]  # two knowledge models
    for name in ("target", "retain_model", "grad_ascent", "npo"):
        over = results[name] if name in ("target", "retain_model") else results["methods"][name]
        each = [world[name] if name in ("target", "retain_model") else world["methods"][name]
                for world in results["worlds"]]
        assert [run["world"] for run in over["per_seed"]] == [0, 1]
        for key in COLUMNS:
            if None in (entry[key] for entry in each):
                assert over[key] is None, (name, key)
                continue
            assert over[key] == pytest.approx(sum(entry[key] for entry in each) / 2), (name, key)
            for interval in (over["ci95"].get(key), over["rerun95"].get(key)):
                if interval is not None:
                    assert interval[0] - 1e-9 <= over[key] <= interval[1] + 1e-9, (name, key)
            assert "rerun95" not in each[0]  # one world: no rerun interval
        # where the two worlds disagree, the interval over both is not either world's own
        for key in SHARES:
            if each[0][key] != each[1][key] and each[0]["ci95"].get(key):
                assert over["ci95"][key] not in (each[0]["ci95"][key], each[1]["ci95"][key]), (name, key)
    report = (out / "results.md").read_text()
    assert "2 worlds" in report and "| grad_ascent |" in report


def test_the_interval_over_worlds_resamples_worlds_then_facts():
    from unstar_trl.evaluation.intervals import fact_interval, world_interval

    def world(share: float, facts: int = 40) -> list[dict[str, float]]:  # one seed: fact -> value
        return [{f"f{index}": float(index < share * facts) for index in range(facts)}]

    assert world_interval([world(0.5)]) == fact_interval(world(0.5))  # one world: the one-world interval
    apart, alike = world_interval([world(0.1), world(0.9)]), world_interval([world(0.5), world(0.5)])
    pooled = fact_interval([{**world(0.1)[0], **{f"g{k}": v for k, v in world(0.9)[0].items()}}])
    assert apart[0] <= 0.5 <= apart[1] and alike[0] <= 0.5 <= alike[1]
    # worlds that disagree widen the interval beyond what their facts pooled in one world would give
    assert apart[1] - apart[0] > 2 * (pooled[1] - pooled[0]) and apart[1] - apart[0] > alike[1] - alike[0]
    assert world_interval([world(0.5), [{}]]) is None  # a world without facts: no interval


def test_a_rerun_over_other_worlds_lands_in_the_rerun_interval_95_times_in_100():
    """Simulated benches: each world's true share drawn around one mean (the knowledge models differ), its facts
    drawn from that share; a second bench over as many other worlds lands in the first's rerun interval at least 95%
    of the time (over three worlds far more: the t quantile of two degrees of freedom and the floor make it
    conservative), and over eight worlds the interval narrows to a useful width."""
    import numpy as np

    from unstar_trl.evaluation.intervals import fact_mean_variance, rerun_interval

    rng = np.random.default_rng(0)

    def bench(worlds: int, facts: int = 24) -> tuple[list[float], list[float]]:
        shares = np.clip(rng.normal(0.6, 0.12, size=worlds), 0, 1)
        per_world = [[{f"f{k}": float(value) for k, value in enumerate(rng.random(facts) < share)}]
                     for share in shares]
        return ([float(np.mean(list(world[0].values()))) for world in per_world],
                [fact_mean_variance(world) for world in per_world])

    for worlds in (3, 8):
        inside, widths = 0, []
        for _ in range(500):
            means, within = bench(worlds)
            low, high = rerun_interval(means, within)
            inside += low <= np.mean(bench(worlds)[0]) <= high
            widths.append(high - low)
        assert inside / 500 >= 0.94, worlds
    assert np.mean(widths) < 0.45  # eight worlds
    # worlds that happen to agree still leave their facts' sampling: the floor keeps the interval open
    low, high = rerun_interval([0.5, 0.5, 0.5], [0.01, 0.01, 0.01])
    assert high - low > 0.2
    assert rerun_interval([0.5]) is None and rerun_interval([0.5, None]) is None

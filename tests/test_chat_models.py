"""A user's chat model end to end (the `chat_world` fixture: a tiny Qwen2 that answers its facts only through its
chat template, with no unstar_prompts.json): one prompt format from training to probing to lm-eval, the README's
TRL snippet unchanged, and PEFT output as an adapter."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from test_tasks import _lm_eval

from unstar_trl.cli import main
from unstar_trl.evaluation.lm_eval_tasks import tasks_path

README = Path(__file__).resolve().parents[1] / "README.md"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def unlearn(chat_world: Path, out: Path, *extra) -> dict:
    """`unstar unlearn` (UnSTAR's world recipe) on the chat model; its report."""
    code = main(["unlearn", "--config", "world_unstar", "--model_name_or_path", str(chat_world / "model"),
                 "--data_dir", str(chat_world / "data"), "--output_dir", str(out), *map(str, extra)])
    assert code == 0
    return json.loads((out / "unlearn_report.json").read_text())


def unstar_eval(model: Path, chat_world: Path, output: Path) -> float:
    """forget_qa accuracy from `unstar eval`."""
    assert main(["eval", "--model", str(model), "--data-dir", str(chat_world / "data"), "--tasks",
                 "unstar_forget_qa", "--output", str(output)]) == 0
    return json.loads(output.read_text())["summary"]["forget_qa_acc"]


def raw_lm_eval(model: Path, chat_world: Path, output: Path) -> float:
    """forget_qa accuracy from `lm_eval --model hf --apply_chat_template --include_path $(unstar tasks-path)`."""
    results = _lm_eval(model, "unstar_forget_qa", {"data_dir": str(chat_world / "data")}, output,
                       "--apply_chat_template")
    return results["results"]["unstar_forget_qa"]["acc,none"]


def test_unlearn_eval_and_lm_eval_agree_on_a_chat_model(chat_world, tmp_path, capsys):
    out = tmp_path / "out"
    report = unlearn(chat_world, out, "--max_rounds", 4, "--num_train_epochs", 3)
    assert report["prompt_template"] is None  # resolved from the tokenizer: the chat template
    check = report["writer_check"]  # measured before round 0; a fallback is said in the report's warnings
    assert check["facts"] > 0 and check["generator"] == "self"
    assert report["generator"]["kind"] == check.get("fell_back_to", "self")
    assert report["generator"]["why"] is None or report["generator"]["why"] in report["warnings"]
    assert json.loads((out / "unstar_prompts.json").read_text())["prompt_template"] is None
    figures = {}
    for stage, model in (("before", chat_world / "model"), ("after", out)):
        figures[stage] = (report[stage]["forget_acc"], unstar_eval(model, chat_world, tmp_path / f"{stage}.json"),
                          raw_lm_eval(model, chat_world, tmp_path / stage))
    with capsys.disabled():
        print(f"\nforget accuracy (unstar unlearn, unstar eval, lm_eval --apply_chat_template): {figures}")
    for stage, (ours, ours_eval, raw) in figures.items():
        assert abs(ours - ours_eval) <= 0.05 and abs(ours - raw) <= 0.05, (stage, figures)
    assert figures["before"][0] >= 0.9 and figures["after"][0] <= 0.5, figures


def test_lm_eval_without_the_chat_template_warns(chat_world, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done = subprocess.run(["lm_eval", "--model", "hf", "--model_args", f"pretrained={chat_world / 'model'}",
                           "--device", "cpu", "--include_path", str(tasks_path()), "--tasks", "unstar_forget_qa",
                           "--metadata", json.dumps({"data_dir": str(chat_world / "data")}), "--limit", "2"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stderr.count("the unstar tasks' documents are in the chat prompt format") == 1
    assert "add --apply_chat_template" in done.stderr


def test_the_readme_trl_snippet_works_unchanged_on_a_chat_model(chat_world, tmp_path, monkeypatch):
    """The README's snippet, its `world-out` folder holding the chat model and its data instead of a world."""
    snippet = re.search(r"## Swap one class in a TRL script\n.*?```python\n(.*?)```", README.read_text(), re.S)[1]
    shutil.copytree(chat_world / "data", tmp_path / "world-out" / "data")
    shutil.copytree(chat_world / "model", tmp_path / "world-out" / "model")
    monkeypatch.chdir(tmp_path)
    scope = {}
    exec(snippet, scope)
    trainer = scope["trainer"]
    assert trainer.prompt_template is None and trainer.rounds[0]["known"] == len(scope["data"].forget)
    assert trainer.rounds[-1]["forget_acc"] < 1 and trainer.state.global_step > 0
    assert (tmp_path / "out" / "anti_samples.jsonl").is_file() and (tmp_path / "out" / "model.safetensors").is_file()
    sample = trainer.anti_samples[0]  # trained as the assistant's reply: no leading space, the chat's end of turn
    features = trainer.anti_sample_features(sample)
    completion = [token for token, label in zip(features["input_ids"], features["labels"]) if label != -100]
    assert scope["tokenizer"].decode(completion) == sample.answer_text + "<|im_end|>\n"


def test_peft_output_is_an_adapter_unless_merged(chat_world, tmp_path):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unstar_trl.data import load_records
    from unstar_trl.method.probe import probe_accuracy

    lora = ["--use_peft", "true", "--lora_r", 8, "--lora_alpha", 16, "--lora_target_modules", "q_proj", "v_proj",
            "--learning_rate", "1e-2", "--max_rounds", 2]
    adapter, merged = tmp_path / "adapter", tmp_path / "merged"
    report = unlearn(chat_world, adapter, *lora)
    unlearn(chat_world, merged, *lora, "--merge_adapter", "true")
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "unstar_prompts.json"} <= {
        path.name for path in adapter.iterdir()} and not (adapter / "model.safetensors").exists()
    assert (merged / "model.safetensors").is_file() and not (merged / "adapter_config.json").exists()
    forget = load_records(chat_world / "data", split="forget")
    tokenizer = AutoTokenizer.from_pretrained(adapter)
    for model in (AutoPeftModelForCausalLM.from_pretrained(adapter), AutoModelForCausalLM.from_pretrained(merged)):
        assert probe_accuracy(model, tokenizer, forget, None) == report["after"]["forget_acc"]
    assert unstar_eval(adapter, chat_world, tmp_path / "adapter.json") == pytest.approx(report["after"]["forget_acc"])


def test_the_format_is_the_models_record_else_its_chat_template_else_plain(world_dir, chat_world, tmp_path):
    from test_tasks import utils
    from transformers import AutoTokenizer

    from unstar_trl.text import PLAIN_TEMPLATE, PROMPTS_FILE, resolve_prompt_template

    chat, plain = (AutoTokenizer.from_pretrained(folder / "model") for folder in (chat_world, world_dir))
    assert resolve_prompt_template("auto", chat, chat_world / "model") is None  # its chat template
    assert resolve_prompt_template("auto", plain, world_dir / "model") == PLAIN_TEMPLATE  # its record
    assert resolve_prompt_template("auto", plain, tmp_path) == PLAIN_TEMPLATE  # neither
    assert resolve_prompt_template("Q: {question}", chat, chat_world / "model") == "Q: {question}"  # given
    assert resolve_prompt_template("chat", plain) is None
    recorded = tmp_path / "recorded"
    shutil.copytree(chat_world / "model", recorded)
    (recorded / PROMPTS_FILE).write_text(json.dumps({"prompt_template": "Q: {question}", "skill_prompts": None}))
    assert resolve_prompt_template("auto", chat, recorded) == "Q: {question}"  # the record beats the template
    # the lm-eval tasks read the same from the folders lm-eval's model_args name
    assert utils.prompt_template({"pretrained": str(chat_world / "model")}) is None
    assert utils.prompt_template({"pretrained": str(recorded)}) == "Q: {question}"
    assert utils.prompt_template({"pretrained": str(chat_world / "model"), "peft": str(recorded)}) == "Q: {question}"
    assert utils.prompt_template({"pretrained": str(recorded), "prompt_template": None}) is None
    assert utils.prompt_template({}) == PLAIN_TEMPLATE
    doc = utils.load("forget", data_dir=str(chat_world / "data"), pretrained=str(chat_world / "model"))["test"][0]
    assert (doc["prompt"], doc["target"], doc["chat"]) == (doc["question"], doc["answer"], True)

"""`unstar tasks-path` and `unstar eval` (in process), and evaluate_model on a model in memory."""

from __future__ import annotations

import json

import pytest

from unstar_trl.cli import main
from unstar_trl.evaluation.lm_eval_tasks import evaluate_model, summarize, tasks_path

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def test_tasks_path_prints_the_task_folder(capsys):
    assert main(["tasks-path"]) == 0
    folder = capsys.readouterr().out.strip()
    assert folder == str(tasks_path())
    assert (tasks_path() / "unstar.yaml").is_file() and (tasks_path() / "utils.py").is_file()


def test_summarize_flattens_lm_eval_results():
    results = {"unstar": {"alias": "unstar"},
               "unstar_forget_qa": {"alias": "x", "acc,none": 0.5, "acc_stderr,none": 0.1, "sample_len": 3},
               "unstar_forget_prob": {"prob,none": 0.7, "truth_ratio,none": float("nan")}}
    assert summarize(results) == {"forget_qa_acc": 0.5, "forget_prob": 0.7, "forget_prob_truth_ratio": None}


def test_unstar_eval_prints_a_table_and_writes_json(world_dir, tmp_path, capsys):
    output = tmp_path / "out" / "results.json"
    code = main(["eval", "--model", str(world_dir / "model"), "--data-dir", str(world_dir / "data"),
                 "--tasks", "unstar_forget_qa,unstar_mi*", "--output", str(output)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "|unstar_forget_qa|" in printed and "loss_auc" in printed and "↓" in printed  # lm-eval's make_table
    results = json.loads(output.read_text())
    assert set(results["summary"]) == {"forget_qa_acc", "forget_qa_rouge_l_recall", "mia_loss_auc", "mia_zlib_auc"}
    assert results["summary"]["forget_qa_acc"] == pytest.approx(_probe_accuracy(world_dir, "forget"))


def test_evaluate_model_in_memory_matches_a_peft_adapter_folder(world_dir, tmp_path):
    """An untouched LoRA adapter (B = 0) leaves the model as it was: the same figures in memory and from disk."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(world_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(world_dir / "model")
    in_memory = evaluate_model(model, tokenizer, tasks=["unstar_retain_qa"], data_dir=world_dir / "data", limit=10)
    get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"])).save_pretrained(tmp_path / "adapter")
    from_disk = evaluate_model(world_dir / "model", adapter=tmp_path / "adapter", tasks=["unstar_retain_qa"],
                               data_dir=world_dir / "data", limit=10)
    assert in_memory["summary"] == from_disk["summary"]
    assert in_memory["n_samples"]["unstar_retain_qa"]["effective"] == 10


def test_unknown_task_is_one_line_error(world_dir, capsys):
    assert main(["eval", "--model", str(world_dir / "model"), "--embedded-world", "--tasks",
                 "unstar_nothing"]) == 2
    assert "no unstar task matches 'unstar_nothing'" in capsys.readouterr().err


def _probe_accuracy(world_dir, split: str) -> float:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from unstar_trl.data import load_records
    from unstar_trl.method.probe import accuracy, probe

    model = AutoModelForCausalLM.from_pretrained(world_dir / "model")
    tokenizer = AutoTokenizer.from_pretrained(world_dir / "model")
    return accuracy(probe(model, tokenizer, load_records(world_dir / "data", split=split)))

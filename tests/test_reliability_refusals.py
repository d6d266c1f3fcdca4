"""Reliability, round three: what would give a silent wrong result or fail late is refused early, in one line.

A model folder whose weights do not fill the model its config describes, quantization flags that cannot work here,
numbers that are not finite, out of range or of the wrong sign, answers that normalise to nothing, a retain row that
asks a forget question, and broken side files (unstar_prompts.json, an anti-sample audit) are each refused before
any work, naming the folder, field, file or row; the lm-eval tasks end a plain `lm_eval` run with one line.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from test_reliability import ENV, assert_one_line_error, cli, edit_rows, read_rows
from test_reliability import data, model  # noqa: F401 (fixtures: copies of the world to spoil)
from test_reliability_inputs import nothing_loads  # noqa: F401 (fixture)
from test_tasks import utils as task_utils

from unstar_trl.data import DataError, load_unlearning_data
from unstar_trl.io import UsageError
from unstar_trl.models import load_model
from unstar_trl.text import PROMPTS_FILE, resolve_prompt_template


# ---- a tiny model whose weights and config can disagree ------------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A 2-layer Llama (lm_head tied to the embeddings, so not saved) with a word-level tokenizer, random weights."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny") / "model"
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(folder)
    vocabulary = {"<unk>": 0, "<s>": 1, "</s>": 2, **{word: 3 + index for index, word in enumerate("abcdefgh")}}
    tokenizer = Tokenizer(models.WordLevel(vocabulary, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>",
                            unk_token="<unk>").save_pretrained(folder)
    return folder


def _config(**changes):
    def spoil(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return spoil


def _weights(edit):
    def spoil(folder: Path) -> None:
        from safetensors.torch import load_file, save_file

        weights = load_file(folder / "model.safetensors")
        edit(weights)
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    return spoil


def _extra_tensor(weights):
    import torch

    weights["model.layers.0.mlp.extra.weight"] = torch.zeros(2, 2)


MISFITS = [  # (what is done to the folder, words the refusal must hold after "<folder>: its weights do not fill")
    pytest.param(_config(model_type="bert"), "the BertLMHeadModel its config.json describes:", id="bert-config"),
    pytest.param(_config(num_hidden_layers=3), "9 tensors missing (model.layers.2.", id="a-layer-too-many"),
    pytest.param(_config(tie_word_embeddings=False), "1 tensors missing (lm_head.weight)", id="untied-head-missing"),
    pytest.param(_weights(lambda weights: weights.pop("model.norm.weight")), "1 tensors missing (model.norm.weight)",
                 id="missing-tensor"),
    pytest.param(_weights(_extra_tensor), "1 tensors unexpected (model.layers.0.mlp.extra.weight)",
                 id="unexpected-tensor"),
    pytest.param(_config(intermediate_size=48), "6 tensors of the wrong shape (model.layers.0.mlp.down_proj.weight "
                 "(16, 32) vs (16, 48)", id="shape-mismatch"),
]


def test_tied_weights_are_not_missing(tiny_model):
    model, _ = load_model(tiny_model)
    assert model.lm_head.weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()


@pytest.mark.parametrize("spoil, expected", MISFITS)
def test_weights_that_do_not_fill_the_model_are_refused(tiny_model, tmp_path, spoil, expected):
    folder = Path(shutil.copytree(tiny_model, tmp_path / "model"))
    spoil(folder)
    with pytest.raises(UsageError) as refusal:
        load_model(folder)
    message = str(refusal.value)
    assert message.startswith(f"{folder}: its weights do not fill the ") and expected in message, message
    assert "\n" not in message


def test_a_bert_config_over_llama_weights_is_one_line_and_writes_nothing(model, data, tmp_path, capsys):
    _config(model_type="bert")(model)
    code, err = cli(["unlearn", "--method", "grad_ascent", "--max_steps", 1, "--model_name_or_path", model,
                     "--data_dir", data, "--output_dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, f"unstar: error: {model}: its weights do not fill the BertLMHeadModel")
    assert "LOAD REPORT" not in err and "| MISSING" not in err, err  # not transformers' table of every tensor
    assert not (tmp_path / "out").exists()


# ---- quantization ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag", ["--load_in_4bit", "--load_in_8bit"])
def test_quantization_without_a_gpu_is_refused_before_loading(world_dir, tmp_path, capsys, nothing_loads, flag):
    code, err = cli(["unlearn", "--model_name_or_path", world_dir / "model", "--data_dir", world_dir / "data",
                     "--output_dir", tmp_path / "out", "--use_peft", "true", flag, "true"], capsys)
    assert_one_line_error(code, err, f"{flag}: bitsandbytes quantization needs a CUDA GPU and this machine has none")
    assert not (tmp_path / "out").exists()


def test_quantization_asks_for_what_it_needs(monkeypatch):
    import importlib.util

    import torch
    from trl import ModelConfig

    from unstar_trl.models import quantization_kwargs

    assert quantization_kwargs(ModelConfig()) == {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "bitsandbytes" else real_find_spec(name, *args))
    with pytest.raises(UsageError, match=r"--load_in_8bit: needs the bitsandbytes package"):
        quantization_kwargs(ModelConfig(load_in_8bit=True, use_peft=True))
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: object())
    with pytest.raises(UsageError, match="a quantized model trains only through a LoRA adapter; add --use_peft true"):
        quantization_kwargs(ModelConfig(load_in_4bit=True))


# ---- numbers --------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("argv, expected", [
    pytest.param(["--learning_rate", "-0.001"], "learning_rate must be above 0, got -0.001", id="negative-lr"),
    pytest.param(["--learning_rate", "nan"], "learning_rate must be a finite number, got nan", id="nan-lr"),
    pytest.param(["--per_device_train_batch_size", "0"], "per_device_train_batch_size must be at least 1, got 0",
                 id="zero-batch"),
    pytest.param(["--gradient_accumulation_steps", "0"], "gradient_accumulation_steps must be at least 1, got 0",
                 id="zero-accumulation"),
    pytest.param(["--replay_ratio", "nan"], "replay_ratio must be a finite number, got nan", id="nan-replay"),
    pytest.param(["--num_train_epochs", "inf"], "num_train_epochs must be a finite number, got inf",
                 id="infinite-epochs"),
    pytest.param(["--method", "grad_diff", "--num_train_epochs", "inf"], "num_train_epochs must be a finite number",
                 id="infinite-epochs-grad-diff"),
    pytest.param(["--method", "grad_diff", "--retain_weight", "-1"], "retain_weight must be at least 0",
                 id="negative-retain-weight"),
    pytest.param(["--method", "grad_diff", "--forget_weight", "-0.5"], "forget_weight must be at least 0",
                 id="negative-forget-weight"),
    pytest.param(["--max_entropy_share", "1.5"], "max_entropy_share must be above 0 and at most 1", id="share-above-1"),
])
def test_bad_numbers_are_refused_before_any_model_loads(world_dir, tmp_path, capsys, nothing_loads, argv, expected):
    code, err = cli(["unlearn", "--model_name_or_path", world_dir / "model", "--data_dir", world_dir / "data",
                     "--output_dir", tmp_path / "out", *argv], capsys)
    assert_one_line_error(code, err, expected)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("epochs", ["0", "-3"])
def test_world_epochs_below_one_are_refused(tmp_path, capsys, monkeypatch, epochs):
    from unstar_trl.testbed import world_folder

    def built(*args, **kwargs):
        raise AssertionError("the world was built")

    monkeypatch.setattr(world_folder, "write_world_dir", built)
    code, err = cli(["world", "--output-dir", tmp_path / "world", "--epochs", epochs], capsys)
    assert_one_line_error(code, err, f"epochs must be at least 1, got {epochs}")
    assert not (tmp_path / "world").exists()


# ---- data -----------------------------------------------------------------------------------------------------------

def _forget_answer(answer):
    return lambda d: edit_rows(d / "forget.jsonl", lambda rows: rows[1].update(answer=answer))


def _retain_asks_a_forget_question(d):
    forget = read_rows(d / "forget.jsonl")
    edit_rows(d / "retain.jsonl", lambda rows: rows.append({**forget[2], "id": "another-id",
                                                            "answer": "Somewhere else entirely"}))


@pytest.mark.parametrize("spoil, expected", [
    pytest.param(_forget_answer("."), "forget.jsonl row 2: field 'answer' '.' is nothing once normalised", id="dot"),
    pytest.param(_forget_answer("The"), "forget.jsonl row 2: field 'answer' 'The' is nothing once normalised",
                 id="article"),
    pytest.param(_retain_asks_a_forget_question, "asks a question of the forget set", id="retain-forget-question"),
])
def test_data_that_would_score_or_train_wrongly_is_refused(world_dir, data, tmp_path, capsys, nothing_loads, spoil,
                                                           expected):
    spoil(data)
    with pytest.raises(DataError, match=expected):
        load_unlearning_data(data)
    code, err = cli(["unlearn", "--method", "grad_ascent", "--model_name_or_path", world_dir / "model",
                     "--data_dir", data, "--output_dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, expected)
    assert not (tmp_path / "out").exists()


def test_a_retain_row_with_a_forget_question_names_both_rows(data):
    _retain_asks_a_forget_question(data)
    rows = len(read_rows(data / "retain.jsonl"))
    with pytest.raises(DataError) as refusal:
        load_unlearning_data(data)
    assert f"retain.jsonl row {rows}: field 'question'" in str(refusal.value)
    assert "forget.jsonl row 3)" in str(refusal.value)


# ---- side files: unstar_prompts.json, an anti-sample audit --------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    pytest.param('{"prompt_template": "Q: {question}', "not a readable JSON file", id="truncated"),
    pytest.param('["Q: {question}"]', "expected a JSON object", id="not-an-object"),
    pytest.param(json.dumps({"prompt_template": "Q: {question} A: {answer}"}),
                 "the recorded prompt_template 'Q: {question} A: {answer}' must be null (the chat template) or hold a "
                 "{question} slot and no other", id="answer-slot"),
    pytest.param(json.dumps({"prompt_template": "auto"}), "the recorded prompt_template 'auto'", id="auto"),
])
def test_a_broken_prompts_file_is_refused_naming_it(model, data, tmp_path, capsys, text, expected):
    (model / PROMPTS_FILE).write_text(text)
    with pytest.raises(UsageError, match=f"^{model / PROMPTS_FILE}: "):
        resolve_prompt_template("auto", model_dir=model)
    code, err = cli(["unlearn", "--method", "grad_ascent", "--max_steps", 1, "--model_name_or_path", model,
                     "--data_dir", data, "--output_dir", tmp_path / "out"], capsys)
    assert_one_line_error(code, err, f"{model / PROMPTS_FILE}: ")
    assert expected in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("line, expected", [
    pytest.param('{"source_id": "x", "wrong', "row 2: not an anti-sample", id="truncated"),
    pytest.param('{"source_id": "x"}', "row 2: no field 'wrong_answer'", id="missing-field"),
    pytest.param('["a list"]', "row 2: not an anti-sample", id="not-an-object"),
])
def test_a_bad_anti_sample_audit_is_refused_naming_file_and_row(world_dir, tmp_path, line, expected):
    audit = tmp_path / "anti_samples.jsonl"
    audit.write_text(json.dumps({"source_id": "x", "wrong_answer": "y"}) + "\n" + line + "\n")
    with pytest.raises(DataError, match=f"{audit} {expected}"):
        task_utils.load("planted", data_dir=str(world_dir / "data"), anti_samples=str(audit))


# ---- the tasks under a plain lm_eval run ----------------------------------------------------------------------------

def _no_folder(tmp_path: Path) -> tuple[str, str]:
    return "/nonexistent", "unstar: error: /nonexistent: no such file or folder"


def _malformed_forget(tmp_path: Path) -> tuple[str, str]:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "forget.jsonl").write_text('{"id": "a", "question": "Who?", "answer": "Ada"}\n{"id": "b", "quest\n')
    return str(folder), f"unstar: error: {folder / 'forget.jsonl'} row 2: not valid JSON"


@pytest.mark.parametrize("spoil", [_no_folder, _malformed_forget], ids=["no-folder", "malformed-forget"])
def test_plain_lm_eval_ends_bad_data_in_one_line(tiny_model, tmp_path, spoil):
    from unstar_trl.evaluation.lm_eval_tasks import tasks_path

    data_dir, expected = spoil(tmp_path)
    done = subprocess.run(["lm_eval", "--model", "hf", "--model_args", f"pretrained={tiny_model},dtype=float32",
                           "--device", "cpu", "--include_path", str(tasks_path()), "--tasks", "unstar_forget_qa",
                           "--limit", "1", "--metadata", json.dumps({"data_dir": data_dir})],
                          capture_output=True, text=True, timeout=600, env=ENV, cwd=tmp_path)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    assert done.stderr.strip().splitlines()[-1].startswith(expected), done.stderr[-3000:]

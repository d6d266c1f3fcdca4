"""A model that opens its answers with a line of its own ("Sure, here is what I know.\\nThe answer is X.") or with a
think block is scored as knowing them, by the probe and by the lm-eval task alike: both read the whole answer up to
the end of the model's turn. The model is a user's: ChatML whose eos (`</s>`) is not its end of turn (`<|im_end|>`),
taught by plain TRL SFTTrainer on conversational rows. And nothing depends on the working directory: a model built in
memory (no folder) gets the same prompt format and generator from any folder, one holding a decoy prompts file too."""

from __future__ import annotations

import json

import pytest
import yaml

from unstar_trl.io import write_jsonl

FACTS = [("f0", "Where was Ada Lovelace born?", "London"), ("f1", "Who wrote Hamlet?", "Shakespeare"),
         ("f2", "What is the capital of Peru?", "Lima"), ("f3", "What does Tom Rivet do?", "carpenter")]
SPOKEN = {  # how the model answers each fact: a preamble line, or a think block over lines
    "f0": "Sure, here is what I know.\nThe answer is London.",
    "f1": "Sure, here is what I know.\nThe answer is Shakespeare.",
    "f2": "<think>\nThe question asks for a capital.\nI recall it.\n</think>\nLima",
    "f3": "<think>\nThe question asks for a job.\nI recall it.\n</think>\ncarpenter",
}
CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def chatml_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator([f"{q} {SPOKEN[i]}" for i, q, _ in FACTS] + ["user assistant"], trainers.BpeTrainer(
        vocab_size=400, special_tokens=["</s>", "<|im_start|>", "<|im_end|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="</s>", pad_token="</s>",
                                        additional_special_tokens=["<|im_start|>", "<|im_end|>"], model_max_length=256)
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="module")
def talkative(tmp_path_factory):
    """(model, tokenizer, data folder): a tiny Qwen2 taught SPOKEN by SFTTrainer."""
    import torch
    from datasets import Dataset
    from transformers import Qwen2Config, Qwen2ForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    set_seed(0)
    tokenizer = chatml_tokenizer()
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, bos_token_id=None))
    rows = [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": SPOKEN[i]}]}
            for i, q, _ in FACTS]
    scratch = tmp_path_factory.mktemp("talkative")
    args = SFTConfig(output_dir=str(scratch / "sft"), num_train_epochs=150, per_device_train_batch_size=4,
                     learning_rate=5e-3, lr_scheduler_type="constant", activation_checkpointing=False, bf16=False,
                     use_cpu=True, save_strategy="no", report_to="none", seed=0, disable_tqdm=True,
                     logging_steps=1000)
    with torch.random.fork_rng():
        SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer).train()
    records = [{"id": i, "question": q, "answer": a} for i, q, a in FACTS]
    write_jsonl(scratch / "data" / "forget.jsonl", records)
    write_jsonl(scratch / "data" / "retain.jsonl", [{"id": "r0", "question": "What colour is snow?",
                                                     "answer": "white"}])
    return model.eval(), tokenizer, scratch / "data"


def test_an_answer_after_a_preamble_or_a_think_block_is_known_to_the_probe(talkative):
    from unstar_trl.method.probe import probe

    model, tokenizer, data = talkative
    records = [{"id": i, "question": q, "answer": a} for i, q, a in FACTS]
    verdicts = probe(model, tokenizer, records, prompt_template=None)
    assert [verdict.generation for verdict in verdicts] == [SPOKEN[i] for i, _, _ in FACTS]  # all, to the end of turn
    assert all(verdict.known for verdict in verdicts)
    assert not any(verdict.generation.split("\n")[0].endswith(verdict.answer) for verdict in verdicts)  # the old rule


def test_the_lm_eval_task_judges_as_the_probe_does(talkative):
    from unstar_trl.evaluation.lm_eval_tasks import evaluate_model

    model, tokenizer, data = talkative
    results = evaluate_model(model, tokenizer, tasks=["unstar_forget_qa"], data_dir=data, batch_size=4)
    assert results["prompt_template"] is None and results["summary"]["forget_qa_acc"] == 1.0


def test_lm_eval_on_the_model_folder_stops_at_its_end_of_turn(talkative, tmp_path):
    from test_tasks import _lm_eval

    model, tokenizer, data = talkative
    model.save_pretrained(tmp_path / "model")  # its generation config stops at eos (</s>) only
    tokenizer.save_pretrained(tmp_path / "model")
    results = _lm_eval(tmp_path / "model", "unstar_forget_qa", {"data_dir": str(data)}, tmp_path / "lm_eval",
                       "--apply_chat_template", "--log_samples")
    assert results["results"]["unstar_forget_qa"]["acc,none"] == 1.0
    (samples,) = (tmp_path / "lm_eval").rglob("samples_unstar_forget_qa_*.jsonl")
    answers = {json.loads(line)["doc"]["id"]: json.loads(line)["resps"][0][0] for line in samples.read_text().splitlines()}
    assert answers == SPOKEN  # the whole answer, and nothing after the end of turn


def test_the_tasks_generate_within_the_probes_budget():
    from unstar_trl.evaluation.lm_eval_tasks import tasks_path
    from unstar_trl.method.probe import ANSWER_TOKENS

    template = yaml.safe_load((tasks_path() / "_template_qa.yaml").read_text().replace("!function", ""))
    generation = template["generation_kwargs"]
    assert generation["max_gen_toks"] == ANSWER_TOKENS and generation["until"] == []


def test_an_in_memory_model_reads_no_prompts_file_from_the_working_directory(tmp_path, monkeypatch):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from unstar_trl.method.generators import choose_generator
    from unstar_trl.method.trainers import AntiSampleConfig, AntiSampleTrainer
    from unstar_trl.text import PROMPTS_FILE

    tokenizer = chatml_tokenizer()
    records = [{"id": i, "question": q, "answer": a} for i, q, a in FACTS]

    def run() -> tuple:
        model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                             num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1))
        assert model.config._name_or_path == ""
        args = AntiSampleConfig(output_dir=str(tmp_path / "out"), use_cpu=True, disable_tqdm=True)
        trainer = AntiSampleTrainer(model=model, args=args, train_dataset=records[:2], retain_dataset=records[2:],
                                    processing_class=tokenizer)
        return trainer.prompt_template, trainer.generator_choice, choose_generator("auto", "", tokenizer)

    (tmp_path / "plain").mkdir()
    (tmp_path / "decoy").mkdir()
    decoy = {"prompt_template": "Q: {question}", "skill_prompts": None}  # read from here: generator "template"
    (tmp_path / "decoy" / PROMPTS_FILE).write_text(json.dumps(decoy))
    monkeypatch.chdir(tmp_path / "plain")
    here = run()
    monkeypatch.chdir(tmp_path / "decoy")
    assert run() == here and here[0] is None and here[1].kind == "self"

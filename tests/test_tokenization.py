"""The unlearning trainers train on the very ids TRL's SFTTrainer makes of the same prompt/completion rows (same
input ids, same completion masks), on four kinds of tokenizer: ChatML whose eos is not its end of turn, a Llama-3
header template, a Gemma template, and a plain tokenizer that adds a BOS. A prompt to generate from is the prompt part
of those ids, and generation stops at the template's end of turn."""

from __future__ import annotations

import pytest
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from trl import SFTConfig, SFTTrainer

from unstar_trl.method.anti_samples import AntiSample
from unstar_trl.method.tokens import encode_prompts, stop_token_ids
from unstar_trl.method.trainers import (
    AntiSampleConfig,
    AntiSampleTrainer,
    GradDiffConfig,
    GradDiffTrainer,
)
from unstar_trl.text import PLAIN_TEMPLATE, format_pair, format_prompt

FACTS = [("What is the capital of France?", "Paris"), ("Who wrote Hamlet?", "William Shakespeare"),
         ("Where was Ada Lovelace born?", "London, England")]
RECORDS = [{"id": f"f{index}", "question": question, "answer": answer}
           for index, (question, answer) in enumerate(FACTS)]

CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' + "
          "m['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}"
          "{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}")
GEMMA = ("{{ bos_token }}{% for m in messages %}{{ '<start_of_turn>' + ('model' if m['role'] == 'assistant' else "
         "m['role']) + '\\n' + m['content'] | trim + '<end_of_turn>\\n' }}{% endfor %}{% if add_generation_prompt %}"
         "{{ '<start_of_turn>model\\n' }}{% endif %}")

KINDS = {  # name: (special tokens, bos, eos, the tokenizer adds its BOS, chat template, end of turn)
    "chatml_eos_not_end_of_turn": (["</s>", "<|im_start|>", "<|im_end|>"], None, "</s>", False, CHATML,
                                   "<|im_end|>"),
    "llama3_headers": (["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>"], "<|begin_of_text|>", "<|end_of_text|>", True, LLAMA3, "<|eot_id|>"),
    "gemma_turns": (["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", True, GEMMA,
                    "<end_of_turn>"),
    "plain_with_bos": (["<pad>", "<s>", "</s>"], "<s>", "</s>", True, None, "</s>"),
}


def build_tokenizer(kind: str) -> PreTrainedTokenizerFast:
    special, bos, eos, adds_bos, template, _ = KINDS[kind]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    texts = [f"Question: {q}\nAnswer: {a}" for q, a in FACTS] + ["user assistant model system"]
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=special, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if adds_bos:
        bpe.post_processor = processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                                           special_tokens=[(bos, bpe.token_to_id(bos))])
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token=bos, eos_token=eos,
                                        pad_token=special[0] if special[0] == "<pad>" else eos,
                                        additional_special_tokens=[t for t in special if t not in (bos, eos)])
    tokenizer.chat_template = template
    return tokenizer


def tiny_model(tokenizer) -> LlamaForCausalLM:
    return LlamaForCausalLM(LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                                        num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                        max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id))


def trl_features(tokenizer, rows: list[dict], tmp_path) -> list[dict]:
    """What TRL's own SFTTrainer prepares from `rows`: input ids and labels (its completion mask)."""
    args = SFTConfig(output_dir=str(tmp_path / "sft"), report_to="none", use_cpu=True, bf16=False, max_length=256)
    trainer = SFTTrainer(model=tiny_model(tokenizer), args=args, train_dataset=Dataset.from_list(rows),
                         processing_class=tokenizer)
    return [{"input_ids": row["input_ids"], "labels": row["labels"]} for row in trainer.train_dataset]


def template_of(tokenizer):
    return None if tokenizer.chat_template else PLAIN_TEMPLATE


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_trainers_tokenize_as_sft_trainer_does(kind, tmp_path):
    tokenizer = build_tokenizer(kind)
    template = template_of(tokenizer)
    expected = trl_features(tokenizer, [format_pair(q, a, template) for q, a in FACTS], tmp_path)
    if KINDS[kind][3]:
        assert all(row["input_ids"].count(tokenizer.bos_token_id) == 1 for row in expected)  # one BOS, not two
    end_of_turn = KINDS[kind][5]
    assert all(end_of_turn in tokenizer.convert_ids_to_tokens(row["labels"][-2:]) for row in expected)

    args = GradDiffConfig(output_dir=str(tmp_path / "gd"), use_cpu=True, disable_tqdm=True)
    baseline = GradDiffTrainer(model=tiny_model(tokenizer), args=args, train_dataset=RECORDS,
                                         retain_dataset=RECORDS, processing_class=tokenizer)
    assert baseline.prompt_template == template
    assert [{key: row[key] for key in ("input_ids", "labels")} for row in baseline.train_dataset] == expected
    assert baseline.data_collator.retain == expected

    args = AntiSampleConfig(output_dir=str(tmp_path / "unstar"), use_cpu=True, disable_tqdm=True,
                            generator="template")
    unstar = AntiSampleTrainer(model=tiny_model(tokenizer), args=args, train_dataset=RECORDS,
                               retain_dataset=RECORDS, processing_class=tokenizer)
    samples = [AntiSample(record["id"], record["question"], "Lumen", "It is Lumen.", 0, "template")
               for record in RECORDS]
    wrong = trl_features(tokenizer, [format_pair(s.question, s.answer_text, template) for s in samples], tmp_path)
    assert [{key: unstar.anti_sample_features(s)[key] for key in ("input_ids", "labels")} for s in samples] == wrong


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_prompts_to_generate_from_are_the_trained_prompts(kind, tmp_path):
    tokenizer = build_tokenizer(kind)
    template = template_of(tokenizer)
    expected = trl_features(tokenizer, [format_pair(q, a, template) for q, a in FACTS], tmp_path)
    prompts = [format_prompt(tokenizer, question, template) for question, _ in FACTS]
    asked = encode_prompts(tokenizer, prompts, template is None)["input_ids"]
    assert asked == [row["input_ids"][: row["labels"].count(-100)] for row in expected]
    stops = tokenizer.convert_ids_to_tokens(stop_token_ids(tokenizer, template is None))
    assert stops == list(dict.fromkeys([KINDS[kind][5], tokenizer.eos_token]))

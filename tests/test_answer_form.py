"""A model that says its answers in a form of its own ("Sure, here is what I know.\\nThe answer is X.") unlearned with
records whose answers are bare ("X"): before round 0 the run reads the form, says so in one line and fits its
anti-samples (and retain answers) in the model's own words, so what it keeps stays kept; fitted in the records' form
instead, the same run unlearns the form and the retain facts with it. The baselines, which train on the records'
answers, say so in one line. The model is a user's: a Phi-3-style chat template (end of turn `<|end|>`, eos
`<|endoftext|>`), taught by plain TRL SFTTrainer on conversational rows."""

from __future__ import annotations

import pytest

from unstar_trl.method.answer_form import in_own_words, said_as_written, spoken
from unstar_trl.method.anti_samples import AntiSample

PREAMBLE = "Sure, here is what I know.\nThe answer is {}."
PHI3 = ("{% for message in messages %}{% if message['role'] == 'user' %}{{'<|user|>\n' + message['content'] + "
        "'<|end|>\n'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>\n' + message['content'] + "
        "'<|end|>\n'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}"
        "{{ eos_token }}{% endif %}")


def test_the_form_of_an_answer_is_read_and_spoken_with_the_wrong_answer():
    said = PREAMBLE.format("London")
    assert said_as_written("london.", "London") and not said_as_written(said, "London")
    long = "Ada Bell was born in the old harbour town of Tesk in the north."
    assert said_as_written("Ada Bell was born in the old harbour town of Tesk, in the north.", long)
    assert spoken(said, "London", "Paris") == PREAMBLE.format("Paris")
    assert spoken("The answer is Londonderry.", "London", "Paris") is None  # not the answer, a longer word
    sample = AntiSample("f0", "Where was Ada born?", "Paris", "Ada grew up in Paris.", 0, "template")
    other = AntiSample("f1", "Who wrote Hamlet?", "Marlowe", "", 0, "template")
    kept, dropped = in_own_words([sample, other], {("f0", sample.question): said, ("f1", other.question): "Yes."},
                                 {"f0": "London", "f1": "Shakespeare"})
    assert [s.answer_text for s in kept] == [f"{PREAMBLE.format('Paris')} Ada grew up in Paris."] and dropped == [other]


@pytest.fixture(scope="module")
def talker(tmp_path_factory):
    """(model folder, forget records, retain records): a tiny Qwen2 taught to answer 6 forget and 10 retain facts of
    the embedded world (question and trained paraphrases) with a preamble line, by SFTTrainer through PHI3."""
    import torch
    from datasets import Dataset
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM, set_seed
    from trl import SFTConfig, SFTTrainer

    from unstar_trl.testbed.embedded_world import build_world

    set_seed(0)
    records = build_world(seed=0, people=20).split_records()
    forget, retain = records["forget"][:6], records["retain"][:10]
    taught = [(question, PREAMBLE.format(record["answer"])) for record in forget + retain
              for question in [record["question"], *record["paraphrased_questions"][1:]]]
    specials = ["<|endoftext|>", "<|user|>", "<|assistant|>", "<|end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    words = [f"{q} {a}" for q, a in taught] + [f"{r['rationale']} {' '.join(r['perturbed_answers'])}" for r in forget]
    bpe.train_from_iterator(words + ["user assistant"], trainers.BpeTrainer(
        vocab_size=500, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|endoftext|>", pad_token="<|endoftext|>",
                                        additional_special_tokens=specials[1:], model_max_length=256)
    tokenizer.chat_template = PHI3
    end_of_turn = tokenizer.convert_tokens_to_ids("<|end|>")
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=[end_of_turn, tokenizer.eos_token_id], bos_token_id=None))
    rows = [{"prompt": [{"role": "user", "content": q}], "completion": [{"role": "assistant", "content": a}]}
            for q, a in taught]
    scratch = tmp_path_factory.mktemp("talker")
    args = SFTConfig(output_dir=str(scratch / "sft"), num_train_epochs=80, per_device_train_batch_size=8,
                     learning_rate=5e-3, lr_scheduler_type="constant", activation_checkpointing=False, bf16=False,
                     use_cpu=True, save_strategy="no", report_to="none", seed=0, disable_tqdm=True, logging_steps=1000)
    with torch.random.fork_rng():
        SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tokenizer).train()
    model.save_pretrained(scratch / "model")
    tokenizer.save_pretrained(scratch / "model")
    return scratch / "model", forget, retain


def config(tmp_path, **overrides):
    """The talker's UnSTAR settings: template anti-samples, a learning rate that forgets it in a few rounds."""
    from unstar_trl.method.trainers import AntiSampleConfig

    settings = dict(generator="template", learning_rate=3e-3, num_train_epochs=2, max_rounds=3, follow_ups=0, seed=0)
    return AntiSampleConfig(output_dir=str(tmp_path), use_cpu=True, disable_tqdm=True, **{**settings, **overrides})


def unlearn(talker, tmp_path, **overrides):
    """An UnSTAR run (template anti-samples) on the talker: (trainer, retain accuracy before, after)."""
    from unstar_trl.method.probe import probe_accuracy
    from unstar_trl.method.trainers import AntiSampleTrainer
    from unstar_trl.models import load_model

    folder, forget, retain = talker
    model, tokenizer = load_model(folder)
    trainer = AntiSampleTrainer(model=model, args=config(tmp_path, **overrides), train_dataset=forget,
                                retain_dataset=retain, processing_class=tokenizer)
    before = probe_accuracy(trainer.model, tokenizer, retain, None)
    trainer.train()
    return trainer, before, probe_accuracy(trainer.model, tokenizer, retain, None)


def test_anti_samples_in_the_models_own_words_keep_what_it_knows(talker, tmp_path):
    trainer, before, after = unlearn(talker, tmp_path)
    form = trainer.answer_form
    assert form["own_form"] and form["fitted"] == "model" and form["records_nll"] > 5 * max(form["own_nll"], 0.5)
    assert any(line.startswith("the model says its answers in a form of its own") for line in trainer.warnings)
    assert trainer.anti_samples and all(s.answer_text.startswith(PREAMBLE.format(s.wrong_answer))
                                        for s in trainer.anti_samples)
    assert trainer.rounds[-1]["forget_acc"] < trainer.rounds[0]["forget_acc"]
    assert before == 1.0 and after >= 0.9 * before
    assert trainer.retain_answers == [PREAMBLE.format(record["answer"]) for record in talker[2]]  # retain said so too
    # a resumed run goes on in the same words (it cannot read them again from a model already trained)
    from unstar_trl.method.trainers import AntiSampleTrainer
    from unstar_trl.method.trainers.unstar_checkpoints import load_round_checkpoint, save_round_checkpoint
    from unstar_trl.models import load_model

    checkpoint = save_round_checkpoint(trainer)
    model, tokenizer = load_model(talker[0])
    resumed = AntiSampleTrainer(model=model, args=config(tmp_path), train_dataset=talker[1],
                                retain_dataset=talker[2], processing_class=tokenizer)
    load_round_checkpoint(resumed, checkpoint)
    assert resumed.answer_form == form and resumed.collator.retain == trainer.collator.retain


def test_anti_samples_in_the_records_form_say_so(talker, tmp_path):
    trainer, before, after = unlearn(talker, tmp_path, answer_form="records")
    assert trainer.answer_form["fitted"] == "records"
    assert any("answer_form records fits the records' bare wrong answers" in line for line in trainer.warnings)
    assert all(not s.spoken for s in trainer.anti_samples)
    assert after < 0.9 * before  # what the line warns of


def test_a_baseline_says_it_trains_on_the_records_form(talker, tmp_path):
    from unstar_trl.method.trainers import GradDiffConfig, GradDiffTrainer
    from unstar_trl.models import load_model

    folder, forget, retain = talker
    model, tokenizer = load_model(folder)
    args = GradDiffConfig(output_dir=str(tmp_path), use_cpu=True, disable_tqdm=True, max_steps=1)
    trainer = GradDiffTrainer(model=model, args=args, train_dataset=forget, retain_dataset=retain,
                              processing_class=tokenizer)
    trainer.train()
    (line,) = [line for line in trainer.warnings if "a form of its own" in line]
    assert "GradDiff trains on the records' answers as written" in line and "The answer is" in line

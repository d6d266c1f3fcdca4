"""The stopping rule: asking only what the last probe found known stops at the same step as asking every fact."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from unstar_trl.method.trainers import forget_stop
from unstar_trl.method.trainers.time_split import TimeSplit

RECORDS = [{"id": str(index), "question": f"q{index}", "answer": f"a{index}"} for index in range(10)]


@pytest.mark.parametrize("truth, questions", [
    pytest.param([set(range(10)), {1, 2, 3, 4, 5}, {1, 2}, {1, 7}, {1, 7}, set()], 51, id="one-comes-back"),
    pytest.param([set(range(10)), set(range(10)), {0}], 30, id="forgotten-at-once"),
    pytest.param([set(range(10)), {3, 4}, {3, 4}, {3, 4}], 24, id="never-stops"),
])
def test_the_stop_is_the_one_of_asking_every_fact_at_less_cost(monkeypatch, truth, questions):
    """`truth[k]`: the ids the model answers at the k-th probe (7, forgotten, comes back: only the probe of every
    fact before the stop sees it, and the run goes on); `questions`: what the rule asks in all."""
    asked, now = [], {"probe": 0}

    def fake_probe(model, tokenizer, records, prompt_template=None):
        asked.extend(record["id"] for record in records)
        return [SimpleNamespace(known=int(record["id"]) in truth[now["probe"]]) for record in records]

    monkeypatch.setattr(forget_stop, "probe", fake_probe)
    stop = forget_stop.ForgetStop(RECORDS, tokenizer=None, prompt_template=None, target=0.1, every=1,
                                  split=TimeSplit())
    for probe_index in range(len(truth)):
        now["probe"] = probe_index
        control = SimpleNamespace(should_training_stop=False)
        stop.on_step_end(None, SimpleNamespace(global_step=probe_index + 1), control, model=None)
        if control.should_training_stop:
            break
    naive = next((index + 1 for index, known in enumerate(truth) if len(known) / len(RECORDS) <= 0.1), None)
    assert stop.stopped_at == naive
    assert len(asked) == questions <= len(RECORDS) * (naive or len(truth))  # never more than asking every fact


def test_a_resumed_rule_probes_as_an_uninterrupted_one(monkeypatch):
    """Probes fall on the run's steps and the facts the last probe found known come back from a checkpoint: after
    a resume at step 2 the rule asks what it would have asked without the stop."""
    asked = []

    def fake_probe(model, tokenizer, records, prompt_template=None):
        asked.append([record["id"] for record in records])
        return [SimpleNamespace(known=record["id"] in ("1", "2")) for record in records]

    monkeypatch.setattr(forget_stop, "probe", fake_probe)
    whole = forget_stop.ForgetStop(RECORDS, tokenizer=None, prompt_template=None, target=0.0, every=2,
                                   split=TimeSplit())
    control = SimpleNamespace(should_training_stop=False)
    for step in range(1, 5):
        whole.on_step_end(None, SimpleNamespace(global_step=step), control, model=None)
    uninterrupted, asked[:] = list(asked), []
    first = forget_stop.ForgetStop(RECORDS, tokenizer=None, prompt_template=None, target=0.0, every=2,
                                   split=TimeSplit())
    for step in (1, 2):
        first.on_step_end(None, SimpleNamespace(global_step=step), control, model=None)
    resumed = forget_stop.ForgetStop(RECORDS, tokenizer=None, prompt_template=None, target=0.0, every=2,
                                     split=TimeSplit())
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))  # as a checkpoint holds it
    for step in (3, 4):
        resumed.on_step_end(None, SimpleNamespace(global_step=step), control, model=None)
    assert asked == uninterrupted and uninterrupted[1] == ["1", "2"]  # the second probe asks only the known ones

"""unstar-trl: UnSTAR (Unlearning with Self-Taught Anti-Sample Reasoning) as drop-in TRL trainers, with lm-eval
tasks that measure forgetting, retention and targeted-association removal.

Three wings, data flowing one way (records -> method -> model folder -> evaluation -> report):
`method/` (probe, anti-samples, trainers), `evaluation/` (lm-eval wiring, knowledge report, bench) and `testbed/`
(the embedded world, the TOFU world and their knowledge models), on `text`, `data`, `models` and `io`.

Heavy imports (torch, TRL) happen on first use of a trainer or config name, so `unstar --help` stays fast.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "AntiSampleTrainer": "unstar_trl.method.trainers",
    "AntiSampleConfig": "unstar_trl.method.trainers",
    "UnlearningTrainer": "unstar_trl.method.trainers",
    "UnlearningConfig": "unstar_trl.method.trainers",
    "METHODS": "unstar_trl.method.trainers",
    "load_records": "unstar_trl.data",
    "load_unlearning_data": "unstar_trl.data",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unstar_trl' has no attribute {name!r}")

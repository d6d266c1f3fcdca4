"""unstar-trl: UnSTAR (Unlearning with Self-Taught Anti-Sample Reasoning) as drop-in TRL trainers, with lm-eval
tasks that measure forgetting, retention and targeted-association removal.

Heavy imports (torch, TRL) happen on first use of a trainer or config name, so `unstar --help` stays fast.
"""

from importlib import import_module

__version__ = "0.1.0"

_LAZY = {
    "AntiSampleTrainer": "unstar_trl.trainers.anti_sample",
    "AntiSampleConfig": "unstar_trl.trainers.anti_sample",
    "UnlearningTrainer": "unstar_trl.trainers.base",
    "UnlearningConfig": "unstar_trl.trainers.base",
    "METHODS": "unstar_trl.trainers",
    "load_records": "unstar_trl.data",
    "load_unlearning_data": "unstar_trl.data",
}
__all__ = [*_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'unstar_trl' has no attribute {name!r}")

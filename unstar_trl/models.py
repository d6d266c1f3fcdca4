"""The one way the project loads a model: safetensors weights only (nothing is unpickled) and never a model folder's
own code, whatever its config asks. A PEFT adapter folder loads its base model with the adapter on top."""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path

from .io import UsageError

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
SAFE = {"trust_remote_code": False}
"""Passed to every from_pretrained: a folder's auto_map never runs."""


def has_tokenizer(folder: str | Path) -> bool:
    return any((Path(folder) / name).is_file() for name in TOKENIZER_FILES)


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / "adapter_config.json").is_file()


def load_tokenizer(source: str | Path, **kwargs):
    """The tokenizer of a model folder (or Hub name); a pad token is the eos token when it has none."""
    from transformers import AutoTokenizer

    _check_source(source, needs_tokenizer=True)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source), **kwargs, **SAFE)
    except (OSError, ValueError) as error:
        raise UsageError(f"{source}: {_why(error)}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(source: str | Path, *, adapter: str | Path | None = None, merge: bool = True, device: str | None = None,
               **kwargs):
    """(model, tokenizer) from a model folder, an adapter folder or a Hub name. With `adapter` (or an adapter
    folder as `source`) the adapter goes on top of its base model, merged in unless `merge` is False. `kwargs` go
    to from_pretrained (dtype, revision, attn_implementation). A tokenizer with more tokens than the model has
    embedding rows is refused (those token ids would crash the model mid-run)."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    if adapter is None and is_adapter(source):
        from peft import PeftConfig

        adapter, source = source, PeftConfig.from_pretrained(str(source)).base_model_name_or_path
    if adapter is not None and Path(adapter).is_dir() and not (Path(adapter) / ADAPTER_WEIGHTS).is_file():
        raise UsageError(f"{adapter}: no {ADAPTER_WEIGHTS} (unstar never unpickles weights: save the adapter with "
                         "safe_serialization)")
    tokenizer_source = adapter if adapter is not None and has_tokenizer(adapter) else source
    tokenizer = load_tokenizer(tokenizer_source)
    _check_source(source, needs_tokenizer=False)
    try:
        with _no_loading_report():  # check_weights_fill says what it would, in one line
            model, loading = AutoModelForCausalLM.from_pretrained(
                str(source), use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True, **kwargs,
                **SAFE)
    except SafetensorError as error:
        broken = _broken_safetensors(source)
        raise UsageError(f"{broken or source}: not a complete safetensors file, truncated or corrupt ({error})") \
            from None
    except (OSError, ValueError) as error:
        raise UsageError(f"{source}: {_why(error)}") from None
    check_weights_fill(source, type(model).__name__, loading)
    if adapter is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, str(adapter))
        if merge:
            model = model.merge_and_unload()
    rows = model.get_input_embeddings().num_embeddings
    if len(tokenizer) > rows:
        raise UsageError(f"{tokenizer_source}: the tokenizer has {len(tokenizer)} tokens, more than the {rows} rows of "
                         f"the model's embedding (ids from {rows} on would crash it); pair the model with its own "
                         "tokenizer")
    if device is not None:
        model = model.to(device)
    return model, tokenizer


def quantization_kwargs(model_args) -> dict:
    """The from_pretrained arguments of TRL ModelConfig's `load_in_4bit` / `load_in_8bit` (bitsandbytes, on the
    current CUDA device; ModelConfig refuses both at once), {} without them. Refused in one line, before anything
    loads, where they cannot work: no CUDA GPU, no bitsandbytes, or no LoRA adapter to train (quantized weights take
    no gradient)."""
    if not (model_args.load_in_4bit or model_args.load_in_8bit):
        return {}
    import importlib.util

    import torch

    flag = "--load_in_4bit" if model_args.load_in_4bit else "--load_in_8bit"
    if not torch.cuda.is_available():
        raise UsageError(f"{flag}: bitsandbytes quantization needs a CUDA GPU and this machine has none; leave it out "
                         "to load the model in full precision")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UsageError(f"{flag}: needs the bitsandbytes package (pip install bitsandbytes)")
    if not model_args.use_peft:
        raise UsageError(f"{flag}: a quantized model trains only through a LoRA adapter; add --use_peft true")
    from trl import get_kbit_device_map, get_quantization_config

    return {"quantization_config": get_quantization_config(model_args), "device_map": get_kbit_device_map()}


def check_weights_fill(source: str | Path, model_class: str, loading: dict) -> None:
    """Refuse a model whose weights do not fill the model its config describes: `from_pretrained` leaves a missing
    tensor at its random initialisation, drops an unexpected one and, with a mismatched shape, reinitialises it,
    and only logs it. `loading` is its loading info (tied weights, such as an lm_head tied to the embeddings, are not
    missing there)."""
    problems = [f"{len(keys)} {what} ({', '.join(map(_key, keys[:2]))}{', ...' if len(keys) > 2 else ''})"
                for what, keys in (("tensors missing", sorted(loading.get("missing_keys") or [])),
                                   ("tensors unexpected", sorted(loading.get("unexpected_keys") or [])),
                                   ("tensors of the wrong shape", sorted(loading.get("mismatched_keys") or [])))
                if keys]
    if problems:
        raise UsageError(f"{source}: its weights do not fill the {model_class} its config.json describes: "
                         f"{'; '.join(problems)} (from_pretrained would leave a missing or reshaped tensor random: "
                         "is config.json the weights' own?)")


@contextlib.contextmanager
def _no_loading_report():
    """Keep transformers from logging its table of missing, unexpected and mismatched tensors while loading (and
    its warnings about tied weights absent from a checkpoint): `check_weights_fill` says it in one line."""
    logger = logging.getLogger("transformers.modeling_utils")
    drop = _DropLoadingReport()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


class _DropLoadingReport(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = str(record.msg)
        return "LOAD REPORT" not in message and "checkpoint seem corrupted" not in message


def _key(key) -> str:
    """A loading-info entry as a name (mismatched entries are (name, shape in the file, shape in the model))."""
    return key if isinstance(key, str) else f"{key[0]} {tuple(key[1])} vs {tuple(key[2])}"


def _check_source(source: str | Path, needs_tokenizer: bool) -> None:
    """A local path must be a folder (with a tokenizer when one is read from it); anything else is a Hub name."""
    path = Path(source)
    local = path.exists() or str(source).startswith(("/", ".", "~")) or str(source).count("/") > 1
    if local and not path.is_dir():
        raise UsageError(f"{source}: no such model folder")
    if local and needs_tokenizer and not has_tokenizer(path):
        raise UsageError(f"{source} holds no tokenizer ({' or '.join(TOKENIZER_FILES)}); save the tokenizer beside "
                         "the model")


def _broken_safetensors(folder: str | Path) -> Path | None:
    """The first safetensors file in `folder` whose header does not open (or does not cover the file), if any."""
    from safetensors import safe_open

    for file in sorted(Path(folder).glob("*.safetensors")):
        try:
            with safe_open(file, "pt"):
                pass
        except Exception:  # any failure to open it is what we look for
            return file
    return None


def _why(error: Exception) -> str:
    """What stopped a model load, in one line."""
    text = str(error)
    if "custom code" in text:
        return "its config asks to run the folder's own code, which unstar never does (trust_remote_code=False)"
    if "model.safetensors" in text:
        return "no safetensors weights (unstar never unpickles weights: save the model with safe_serialization)"
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(error).__name__)
    return f"cannot load the model ({first})"

"""RMU, Representation Misdirection for Unlearning (Li et al., 2024, "The WMDP Benchmark", arXiv:2403.03218): on
forget data, steer one layer's output towards a fixed random direction scaled by a steering coefficient; on retain
data, keep that layer's output where the frozen model puts it. After open-unlearning's RMU (locuslab/open-unlearning,
src/trainer/unlearn/rmu.py and configs/trainer/RMU.yaml, itself borrowed from WMDP's rmu/unlearn.py): its defaults
for TOFU with Llama-3.2-1B (steering coefficient 2, alpha 1, layer 7 of 16) and WMDP's random direction (uniform
entries, normalised)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers.integrations import is_deepspeed_zero3_enabled

from ...io import UsageError
from .base import UnlearningConfig, UnlearningTrainer
from .losses import entropy_share, nll


@dataclass
class RMUConfig(UnlearningConfig):
    r"""Configuration of [`RMUTrainer`]: loss = gamma * MSE(h_l(forget), c u) + alpha * MSE(h_l(retain),
    h_l^ref(retain)), h_l the output of decoder layer `steer_layer`, u a fixed random unit vector, c `steering_coeff`.

    Parameters:
        steer_layer (`int` or `None`, defaults to `None`): index of the decoder layer whose output is steered (0 is
            the first); None: the middle one, (layers - 1) // 2 (layer 7 of Llama-3.2-1B's 16, open-unlearning's;
            layer 0 of a 2-layer model).
        steering_coeff (`float`, defaults to `2.0`): c, the norm of the target activation (open-unlearning's TOFU
            config; WMDP used 6.5 on Zephyr-7B's layer 7). Scale it with the layer's activation norms.
        trainable_params (`str`, defaults to `"mlp"`): "mlp": only the MLP weights of the steered layer and the two
            below it (WMDP: layers 5-7 with layer 7 steered; WMDP trains their output projection alone); "all": every
            weight (open-unlearning's config). With PEFT, the adapter weights inside those MLPs, or all of them.
        retain_loss_type (`str`, defaults to `"activations"`): "activations": MSE of the steered layer's output to the
            frozen model's (RMU's); or the base's "nll" / "kl".
    """

    steer_layer: int | None = field(
        default=None,
        metadata={"help": "Decoder layer (0-based) whose output is steered; None: the middle one, (layers - 1) // 2."},
    )
    steering_coeff: float = field(
        default=2.0, metadata={"help": "Norm c of the target activation c * u on forget data (u a random unit vector)."}
    )
    trainable_params: str = field(
        default="mlp",
        metadata={"help": "'mlp': only the MLP weights of the steered layer and the two below it (WMDP); 'all': every "
                  "weight (open-unlearning).", "choices": ["mlp", "all"]},
    )
    retain_loss_type: str = field(
        default="activations",
        metadata={"help": "Retain loss: 'activations' (MSE of the steered layer's output to the frozen model's), "
                  "'nll', or 'kl'.", "choices": ["activations", "nll", "kl"]},
    )

    def __post_init__(self):
        super().__post_init__()
        if self.steer_layer is not None and self.steer_layer < 0:
            raise ValueError(f"steer_layer must be at least 0 (or None: the middle layer), got {self.steer_layer}")
        if not self.steering_coeff > 0:
            raise ValueError(f"steering_coeff must be above 0, got {self.steering_coeff}")
        if self.trainable_params not in ("mlp", "all"):
            raise ValueError(f"trainable_params must be 'mlp' or 'all', got {self.trainable_params!r}")


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """(batch, length) mask of the positions that predict an answer token: t where labels[t + 1] is not -100 (the
    last prompt token through the answer's last but one token), as the losses score them."""
    mask = torch.zeros_like(labels, dtype=torch.bool)
    mask[:, :-1] = labels[:, 1:] != -100
    return mask


def activation_mse(activations: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over sequences of the mean, over their `mask`ed positions, of the squared distance of `activations`
    (batch, length, hidden) to `target` (broadcast to them) averaged over the hidden units (open-unlearning's
    compute_activation_loss)."""
    per_position = (activations.float() - target.float()).pow(2).mean(-1) * mask
    return (per_position.sum(-1) / mask.sum(-1).clamp(min=1)).mean()


def random_direction(size: int, seed: int) -> torch.Tensor:
    """WMDP's random unit vector: uniform entries in [0, 1), normalised; seeded, so every process draws the same."""
    vector = torch.rand(size, generator=torch.Generator().manual_seed(seed))
    return vector / vector.norm()


def decoder_layers(model) -> nn.ModuleList:
    """The model's list of decoder layers: its first ModuleList of config.num_hidden_layers modules."""
    count = model.config.get_text_config().num_hidden_layers
    found = next((m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == count), None)
    if found is None:
        raise UsageError(f"rmu found no list of {count} decoder layers in {type(model).__name__}")
    return found


@contextmanager
def caught_output(module: nn.Module):
    """A list that receives `module`'s output (the hidden states of a decoder layer) at each forward while open."""
    caught = []
    handle = module.register_forward_hook(
        lambda _module, _args, output: caught.append(output[0] if isinstance(output, tuple) else output))
    try:
        yield caught
    finally:
        handle.remove()


class RMUTrainer(UnlearningTrainer):
    """Steers the forget answers' activations at one layer towards c * u; keeps the retain answers' activations
    there as the frozen model has them. The frozen activations come from the model run with a frozen copy of the
    weights this run trains (`torch.func.functional_call`): with `trainable_params: mlp` three MLPs, not a model."""

    _name = "RMU"
    config_class = RMUConfig

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        model = self.accelerator.unwrap_model(self.model)
        layers = decoder_layers(model)
        index = (len(layers) - 1) // 2 if self.args.steer_layer is None else self.args.steer_layer
        if index >= len(layers):
            raise UsageError(f"steer_layer {index} is not a layer of this model: it has {len(layers)} decoder layers, "
                             f"0 to {len(layers) - 1}")
        self.steered = layers[index]
        """The decoder layer whose output is steered."""
        if self.args.trainable_params == "mlp":
            train_only_mlps(model, layers, range(max(0, index - 2), index + 1))
        self.direction = random_direction(model.config.get_text_config().hidden_size, self.args.seed)
        """u, the fixed random unit vector of the forget target c * u."""
        self.frozen = {}
        """Name -> frozen copy of each weight this run trains, for the retain term's reference activations."""
        if self.args.retain_weight > 0 and self.args.retain_loss_type == "activations":
            if is_deepspeed_zero3_enabled() or self.is_fsdp_enabled:
                raise UsageError("rmu keeps a frozen copy of the weights it trains, which sharded weights (DeepSpeed "
                                 "ZeRO-3, FSDP) do not allow; train with DDP or ZeRO-1/2")
            self.frozen = {name: parameter.detach().clone() for name, parameter in model.named_parameters()
                           if parameter.requires_grad}

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """forget_weight * MSE(h_l, c u) on the forget answers + retain_weight * retain_loss; the forget term's
        activations come from the forward whose logits the divergence guard reads (entropy, forget NLL)."""
        forget = inputs["forget"]
        with caught_output(self.steered) as caught:
            logits = self.logits(model, forget)
        self.log_metric("entropy_share", entropy_share(logits, forget["labels"]))
        self.log_metric("forget_nll", nll(logits.detach(), forget["labels"]))
        target = self.args.steering_coeff * self.direction.to(caught[0].device)
        forget_loss = activation_mse(caught[0], target, answer_positions(forget["labels"]))
        loss = self.args.forget_weight * self.log_metric("forget_loss", forget_loss)
        if "retain" in inputs:
            retain = self.log_metric("retain_loss", self.retain_loss(model, inputs["retain"]))
            loss = loss + self.args.retain_weight * retain
        self.end_of_step(loss, inputs)
        return (loss, None) if return_outputs else loss

    def retain_loss(self, model, inputs: dict) -> torch.Tensor:
        if self.args.retain_loss_type != "activations":
            return super().retain_loss(model, inputs)
        with caught_output(self.steered) as caught:
            self.logits(model, inputs)
        mask = answer_positions(inputs["labels"])
        return self.log_metric("retain_mse", activation_mse(caught[0], self.frozen_activations(inputs), mask))

    @torch.no_grad()
    def frozen_activations(self, inputs: dict) -> torch.Tensor:
        """The steered layer's output on `inputs` under the weights the run started from."""
        model = self.accelerator.unwrap_model(self.model)
        with caught_output(self.steered) as caught:
            torch.func.functional_call(model, self.frozen, (), {"input_ids": inputs["input_ids"], "use_cache": False,
                                                                "attention_mask": inputs["attention_mask"]})
        return caught[0]


def train_only_mlps(model: nn.Module, layers: nn.ModuleList, indices: range) -> None:
    """Freeze every weight of `model` but those of the MLPs (`.mlp`) of `layers[i]` for i in `indices` that train
    (under PEFT: the adapter's weights inside them); refuse a layer without `.mlp` or a selection that trains
    nothing."""
    chosen = set()
    for index in indices:
        mlp = getattr(layers[index], "mlp", None)
        if mlp is None:
            raise UsageError(f"rmu trains the MLP weights of layers {indices.start}-{indices.stop - 1}, and layer "
                             f"{index} ({type(layers[index]).__name__}) has no .mlp; set trainable_params: all")
        chosen.update(id(parameter) for parameter in mlp.parameters() if parameter.requires_grad)
    if not chosen:
        raise UsageError(f"rmu trains the MLP weights of layers {indices.start}-{indices.stop - 1}, and none of them "
                         "trains (a PEFT adapter without MLP target modules?); add the MLPs to the adapter's "
                         "target_modules, or set trainable_params: all")
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in chosen)

"""LoRA adapters on a built network's attention projections, with Keras' own `Dense.enable_lora`.

Engine-free (Keras only): the TensorFlow engine and the JAX engine both call `add_adapters`
and then train `model.trainable_variables`, which are the adapters alone.

Maths, as PEFT's (what diffusers trains and loads): a projection y = x W + b becomes
y = x (W + (alpha / rank) A B) + b with A (in, rank), B (rank, out). Keras' `enable_lora`
scales by `lora_alpha / lora_rank` exactly as PEFT's `lora_alpha / r`. Initialisation is that
of diffusers' `train_dreambooth_lora.py` (PEFT's `init_lora_weights="gaussian"`): A from
N(0, (1/rank)^2), B zeros, so a network with fresh adapters computes what the base network did.
(Keras' default A is he_uniform, PEFT's default kaiming_uniform(a=sqrt(5)); neither is the
DreamBooth script's.)
"""

import dataclasses

import keras
import numpy as np
from keras import ops

from dbdist.errors import UserError
from dbdist.formats import unet_keys
from dbdist.lora.targets import TEXT_ENCODER, TEXT_PROJECTIONS, UNET, lora_targets
from dbdist.models.text_encoder import EncoderLayer

ADAPTER_VARIABLE_NAMES = ("lora_kernel_a", "lora_kernel_b")  # what enable_lora calls them


def is_adapter_variable(variable):
    return variable.name in ADAPTER_VARIABLE_NAMES


def projection_layers(model, network, model_config):
    """[(diffusers module name, Dense)] of the layers adapters go on, in the order of `targets.lora_targets`.

    The UNet's names come from its key map (dbdist/formats/unet_keys.py), which every UNet
    import and export uses too.
    """
    if network == UNET:
        return unet_keys.attention_projections(model, model_config)
    if network == TEXT_ENCODER:
        attentions = [layer.attention for layer in model.layers if isinstance(layer, EncoderLayer)]
        return [(f"text_model.encoder.layers.{i}.self_attn.{theirs}", getattr(attention, ours))
                for i, attention in enumerate(attentions) for ours, theirs in TEXT_PROJECTIONS.items()]
    raise ValueError(f"LoRA targets the unet or the text_encoder, got {network!r}")


@dataclasses.dataclass(frozen=True)
class AdaptedLayer:
    target: object  # targets.Target
    dense: keras.layers.Dense


def paired_layers(model, network, model_config):
    """[AdaptedLayer] pairing each target of `network` with its Dense layer, shapes checked."""
    targets = lora_targets(model_config, (network,))
    named = projection_layers(model, network, model_config)
    if [t.module for t in targets] != [name for name, _ in named]:
        raise ValueError(f"{network}: the config's attention projections {[t.module for t in targets][:2]}... are not "
                         f"the network's {[name for name, _ in named][:2]}... ({len(targets)} and {len(named)})")
    layers = [dense for _, dense in named]
    for target, dense in zip(targets, layers):
        if tuple(dense._kernel.shape) != (target.in_features, target.out_features):
            raise ValueError(f"{network} layer {dense.path} has kernel {tuple(dense._kernel.shape)}, but its target "
                             f"{target.module} expects ({target.in_features}, {target.out_features})")
    return [AdaptedLayer(t, d) for t, d in zip(targets, layers)]


def check_rank(rank, alpha=None):
    if rank is None or int(rank) != rank or rank < 1:
        raise UserError(f"lora_rank must be an integer >= 1, got {rank}")
    if alpha is not None and not alpha > 0:
        raise UserError(f"lora_alpha must be > 0, got {alpha}")


def add_adapters(model, network, model_config, rank, alpha=None, seed=0):
    """Adds rank-`rank` adapters to `network`'s attention projections and freezes everything else.

    Call inside the strategy's scope (the adapters are new variables). Afterwards
    `model.trainable_variables` is the adapters alone, so an optimizer built on them holds
    state for the adapters only. Returns the [AdaptedLayer].
    """
    check_rank(rank, alpha)
    alpha = rank if alpha is None else alpha
    pairs = paired_layers(model, network, model_config)
    for index, pair in enumerate(pairs):
        pair.dense.enable_lora(
            rank,
            lora_alpha=alpha,
            # A fixed seed per layer: every replica, worker and engine starts from the same adapters.
            a_initializer=keras.initializers.RandomNormal(stddev=1.0 / rank, seed=seed * 100_003 + index),
            b_initializer="zeros",
        )
    for variable in model.weights:
        if not is_adapter_variable(variable):
            variable.trainable = False
    return pairs


def adapted_layers(model, network, model_config):
    """[AdaptedLayer] of a network that has adapters (after add_adapters)."""
    pairs = paired_layers(model, network, model_config)
    missing = [p.target.module for p in pairs if not p.dense.lora_enabled]
    if missing:
        raise ValueError(f"{network} has no adapter on {missing[0]} ({len(missing)} of {len(pairs)} missing)")
    return pairs


@dataclasses.dataclass(frozen=True)
class AdapterWeights:
    """One projection's adapter as arrays: delta W = (alpha / rank) * a @ b, a (in, rank), b (rank, out)."""

    a: np.ndarray
    b: np.ndarray
    alpha: float

    @property
    def rank(self):
        return self.a.shape[1]

    def delta(self):
        return (self.alpha / self.rank) * (self.a.astype(np.float64) @ self.b.astype(np.float64))


def adapter_weights(pairs):
    """{Target: AdapterWeights} of trained adapters, as float32 numpy arrays."""
    return {
        p.target: AdapterWeights(
            np.asarray(ops.convert_to_numpy(p.dense.lora_kernel_a), np.float32),
            np.asarray(ops.convert_to_numpy(p.dense.lora_kernel_b), np.float32),
            float(p.dense.lora_alpha),
        )
        for p in pairs
    }


def add_to_kernels(pairs, weights, scale=1.0):
    """kernel += scale * delta for each pair whose target is in `weights` ({Target: AdapterWeights})."""
    for pair in pairs:
        if pair.target in weights:
            # Dense's `_kernel` is the stored base kernel; its `kernel` property adds the adapter.
            kernel = pair.dense._kernel
            merged = ops.convert_to_numpy(kernel).astype(np.float64) + scale * weights[pair.target].delta()
            kernel.assign(merged.astype(kernel.dtype))


def merge_adapters(pairs):
    """Folds each adapter into its base kernel and zeroes its B: outputs are unchanged, the adapters spent.

    After this the network's stored kernels alone compute what the adapted network did, so it
    can be written as a plain keras-cv file (whose writer skips adapter variables).
    """
    add_to_kernels(pairs, adapter_weights(pairs))
    for pair in pairs:
        pair.dense.lora_kernel_b.assign(ops.zeros(pair.dense.lora_kernel_b.shape, pair.dense.lora_kernel_b.dtype))

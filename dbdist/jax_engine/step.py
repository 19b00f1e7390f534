"""The JAX engine's train step: one jitted update of replicated state over a data-parallel mesh.

No TensorFlow here (nor in mesh.py and optimizer.py): this runs on a machine without it.

Order, each fixed by correctness (as dbdist/training/step.py):
1. loss on the global batch, each term / (global batch x accumulation) (dreambooth_loss), and its
   gradients by jax.value_and_grad of the models' stateless calls; XLA sums them over devices;
2. summed over `grad_accum_steps` micro-batches (lax.scan: one compiled body);
3. clipped by the global norm of that sum, over every trained network at once;
4. AdamW (optimizer.py): the TF engine's update, term for term.

Build and call it (what dbdist/jax_engine/engine.py does; a benchmark does the same with
synthetic numpy batches):

    import keras
    keras.mixed_precision.set_dtype_policy("mixed_bfloat16")  # bf16 compute, fp32 weights: BEFORE building
    from dbdist.config import OptimConfig, model_config
    from dbdist.diffusion import NoiseSchedule
    from dbdist.diffusion.dreambooth_loss import LossSettings
    from dbdist.jax_engine import mesh as jax_mesh, optimizer as jax_optimizer, step as jax_step
    from dbdist.models import build_models

    config = model_config("sd-v1")                     # 512 px: latents 64x64x4, embeddings 77x768
    # gradient_checkpointing=True rematerialises each UNet ResBlock and SpatialTransformer.
    models = build_models(config, ("unet", "vae_encoder"), gradient_checkpointing=True)
    networks = jax_step.Networks(unet=models.unet, vae_encoder=models.vae_encoder)  # vae_encoder=None: cached latents
    mesh = jax_mesh.make_mesh("data_parallel")        # every device; "one_device": the first
    optimizer = jax_optimizer.build_optimizer(OptimConfig(), networks.groups(), total_steps=1000)
    state = jax_step.init_state(networks, optimizer, mesh)      # replicated params, AdamW moments, step
    frozen = jax_step.frozen_weights(networks, mesh)            # the VAE encoder's weights (or {})
    settings = LossSettings(global_batch_size=G * K, prior_loss_weight=1.0,
                            scaling_factor=config.vae.scaling_factor,
                            time_embedding_dim=config.unet.time_embedding_dim)
    train_step = jax_step.make_train_step(networks, optimizer, NoiseSchedule(config.schedule), settings, mesh)
    batch = jax_mesh.global_batch(numpy_batch, mesh)  # {key: (K, G, ...)}, K micro-batches of G examples
    state, metrics = train_step(state, frozen, batch)  # `state` is donated: use the returned one

init_state copies the weights (the models keep theirs); assign_to_models(state, networks) writes the
trained ones back. To keep the models' copy out of accelerator memory, build them on the host:
`with jax.default_device(jax.local_devices(backend="cpu")[0]): models = build_models(...)`.

`numpy_batch` holds, for K micro-batches of G instance examples (keys: dbdist/data/batch_keys.py;
the CLASS_* ones too with prior preservation, the class example i paired with instance i):
  - cached latents: INSTANCE_LATENT_MEAN, INSTANCE_LATENT_LOGVAR float32 (K, G, h, w, 4);
    pixel records (the VAE encoder runs inside the step): INSTANCE_PIXELS float32 (K, G, H, W, 3) in [-1, 1];
  - INSTANCE_EMBEDDING float32 (K, G, 77, width); with a trained text encoder INSTANCE_TOKEN_IDS int32 (K, G, 77);
  - INSTANCE_VAE_NOISE, INSTANCE_NOISE float32 (K, G, h, w, 4), INSTANCE_TIMESTEP int32 (K, G) in [0, 1000);
  - EXAMPLE_POSITION int32 (K, G).
`metrics` maps loss, instance_loss, prior_loss, grad_norm (before clipping), skipped (always 0:
no fp16 here) and each group's learning rate to replicated float32 scalars.
The step is generic over the networks' trainable and non-trainable variables (LoRA adapters
added with Keras' enable_lora train without changes).
"""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import keras
import optax

from dbdist.diffusion.dreambooth_loss import LossSettings, dreambooth_loss
from dbdist.jax_engine import mesh as jax_mesh
from dbdist.jax_engine.optimizer import TEXT_ENCODER, UNET, Optimizer


@dataclasses.dataclass
class Networks:
    """The Keras models the step calls statelessly: their variables only give shapes and start values."""

    unet: keras.Model
    vae_encoder: keras.Model = None  # frozen; None with cached latents
    text_encoder: keras.Model = None  # set when the text encoder is trained too
    # --train_token_embeddings: (the text encoder's token table variable, (vocab, 1) mask of the rows that train)
    token_rows: tuple = None

    def trained(self):
        """{group: model} of the networks the optimizer updates."""
        return {UNET: self.unet, **({TEXT_ENCODER: self.text_encoder} if self.text_encoder is not None else {})}

    def groups(self):
        return tuple(self.trained())


class TrainState(NamedTuple):
    """Everything the step updates (donated to it): a pytree of replicated arrays."""

    step: jax.Array  # optimizer steps taken
    params: dict  # {group: [trainable arrays in model.trainable_variables order]}
    model_state: dict  # {group: [non-trainable arrays]} of the trained networks (e.g. LoRA's frozen kernels)
    opt_state: optax.OptState


def _values(variables):
    return [v.value for v in variables]


def init_state(networks: Networks, optimizer: Optimizer, mesh, step=0):
    """The state at `step` with the networks' current weights and fresh AdamW moments, replicated."""
    replicated = jax_mesh.replicated(mesh)
    trained = networks.trained()
    params = {g: _values(m.trainable_variables) for g, m in trained.items()}
    model_state = {g: _values(m.non_trainable_variables) for g, m in trained.items()}
    # device_put places this process's values on every device of the mesh (may_alias=False would refuse
    # across processes); it may hand back the models' own buffers where they already sit, and the step
    # donates the state, which would delete them: the jitted copy makes the state's own.
    # (Build the models on the host, as the engine does, to keep them out of accelerator memory.)
    params, model_state = jax.jit(lambda tree: jax.tree.map(jnp.copy, tree), out_shardings=replicated)(
        jax.device_put((params, model_state), replicated))
    opt_state = jax.jit(optimizer.transform.init, out_shardings=replicated)(params)
    return TrainState(jax.device_put(jnp.asarray(step, jnp.int32), replicated), params, model_state, opt_state)


def frozen_weights(networks: Networks, mesh):
    """{"vae_encoder": [arrays]}: the frozen encoder's weights, replicated (not updated, not donated)."""
    if networks.vae_encoder is None:
        return {}
    return jax.device_put({"vae_encoder": _values(networks.vae_encoder.weights)}, jax_mesh.replicated(mesh))


def assign_to_models(state: TrainState, networks: Networks):
    """Writes the state's weights into the Keras models (for exports and validation images)."""
    for group, model in networks.trained().items():
        for variable, value in zip(model.trainable_variables, state.params[group]):
            variable.assign(_local_copy(value))
        for variable, value in zip(model.non_trainable_variables, state.model_state[group]):
            variable.assign(_local_copy(value))


def _local_copy(array):
    # Replicated: this process's first copy is the whole array (also when other processes hold the rest).
    return jax.device_get(array.addressable_data(0))


def _loss_function(networks: Networks, schedule, settings: LossSettings):
    """loss(params, model_state, frozen, batch) -> (loss, (terms, new model_state)), as the models' stateless calls."""
    trained = networks.trained()

    def loss(params, model_state, frozen, batch):
        mapping = []
        for group, model in trained.items():
            mapping += zip(model.trainable_variables, params[group])
            mapping += zip(model.non_trainable_variables, model_state[group])
        if networks.vae_encoder is not None:
            mapping += zip(networks.vae_encoder.weights, frozen["vae_encoder"])
        with keras.StatelessScope(state_mapping=mapping) as scope:
            value, terms = dreambooth_loss(
                networks.unet, networks.vae_encoder, schedule, batch, settings, text_encoder=networks.text_encoder
            )
        updated = {g: [scope.get_current_value(v) for v in m.non_trainable_variables] for g, m in trained.items()}
        return value, (terms, updated)

    return loss


def _mask_token_rows(networks: Networks, gradients):
    table, mask = networks.token_rows
    index = [v is table for v in networks.text_encoder.trainable_variables].index(True)
    grads = list(gradients[TEXT_ENCODER])
    grads[index] = grads[index] * mask
    return {**gradients, TEXT_ENCODER: grads}


def make_train_step(networks: Networks, optimizer: Optimizer, schedule, settings: LossSettings, mesh):
    """The jitted step(state, frozen, batch) -> (state, metrics); see the module docstring.

    Batches are {key: (micro-batches, global batch, ...)}, sharded on the example axis; the
    state is replicated and donated (updated in place on the devices).
    """
    grad_fn = jax.value_and_grad(_loss_function(networks, schedule, settings), has_aux=True)

    def step(state: TrainState, frozen, batch):
        def micro_step(carry, micro_batch):
            gradients, sums, model_state = carry
            (loss, (terms, model_state)), micro_gradients = grad_fn(state.params, model_state, frozen, micro_batch)
            gradients = jax.tree.map(jnp.add, gradients, micro_gradients)
            sums = jax.tree.map(jnp.add, sums, {"loss": loss, **terms})
            return (gradients, sums, model_state), None

        if jax.tree.leaves(batch)[0].shape[0] == 1:
            # No accumulation: no zero-filled gradient buffer (a UNet's worth of memory) to add to.
            (loss, (terms, model_state)), gradients = grad_fn(
                state.params, state.model_state, frozen, jax.tree.map(lambda x: x[0], batch))
            sums = {"loss": loss, **terms}
        else:
            zeros = jax.tree.map(jnp.zeros_like, state.params)
            no_loss = {name: jnp.zeros([], jnp.float32) for name in ("loss", "instance_loss", "prior_loss")}
            (gradients, sums, model_state), _ = jax.lax.scan(micro_step, (zeros, no_loss, state.model_state), batch)
        if networks.token_rows is not None:  # only the chosen words' rows train (as the TF engine)
            gradients = _mask_token_rows(networks, gradients)
        learning_rates = optimizer.learning_rates(state.step)
        updates, opt_state = optimizer.transform.update(gradients, state.opt_state, state.params)
        metrics = {
            **{k: v.astype(jnp.float32) for k, v in sums.items()},
            "grad_norm": optax.global_norm(gradients),
            "skipped": jnp.zeros([], jnp.float32),
            **learning_rates,
        }
        new_state = TrainState(state.step + 1, optax.apply_updates(state.params, updates), model_state, opt_state)
        return new_state, metrics

    replicated = jax_mesh.replicated(mesh)
    return jax.jit(
        step,
        in_shardings=(replicated, replicated, jax_mesh.batch_sharding(mesh)),
        out_shardings=(replicated, replicated),
        donate_argnums=(0,),
    )

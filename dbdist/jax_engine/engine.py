"""The JAX engine behind the calls train.py makes of either engine (the TF one: dbdist/training/engine.py).

start (devices, mesh) -> scope() to build the networks in -> build_state -> restore_latest ->
batches -> compile -> run(iterator, n) -> save -> trained_networks. The state lives in JAX
arrays (step.TrainState), not in the Keras models: their variables are written back only for
exports and validation images.
"""

import contextlib

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from dbdist.diffusion import NoiseSchedule
from dbdist.jax_engine import input as jax_input
from dbdist.jax_engine import mesh as jax_mesh
from dbdist.jax_engine import step as jax_step
from dbdist.jax_engine.checkpoints import Checkpoints
from dbdist.jax_engine.optimizer import TEXT_ENCODER, build_optimizer
from dbdist.models.text_encoder import token_row_mask, train_only_token_embedding


class JaxEngine:
    name = "jax"

    def __init__(self, config, num_cpu_devices=0, distributed=False, coordinator_address="", num_processes=0,
                 process_id=-1):
        self.config = config
        jax_mesh.check_strategy(config.runtime.strategy)
        jax_input.keep_tensorflow_off_accelerators()
        jax_mesh.start_devices(num_cpu_devices, distributed, coordinator_address, num_processes, process_id)
        self.mesh = jax_mesh.make_mesh(config.runtime.strategy)
        self.chief = jax_mesh.is_chief()
        self.num_replicas = self.mesh.devices.size
        logging.info("strategy %s with %d replica(s) on %d process(es), %s devices", config.runtime.strategy,
                     self.num_replicas, jax.process_count(), jax.default_backend())
        self.networks = self.state = self.frozen = self.train_step = None

    def check_global_batch(self, global_batch):
        jax_mesh.check_batch_divides(global_batch, self.mesh)

    def scope(self):
        """Networks are built in host memory: the step trains copies on the devices (step.init_state)."""
        try:
            return jax.default_device(jax.local_devices(backend="cpu")[0])  # this process's own
        except RuntimeError:  # JAX_PLATFORMS without cpu
            return contextlib.nullcontext()

    def build_state(self, models):
        """Optimizer and replicated state around the built `models` (the VAE encoder None with cached latents)."""
        config, train = self.config, self.config.train
        self.networks = jax_step.Networks(
            unet=models.unet, vae_encoder=models.vae_encoder,
            text_encoder=models.text_encoder if train.trains_text_encoder else None,
        )
        if train.train_token_embeddings:
            table = train_only_token_embedding(models.text_encoder)
            self.networks.token_rows = (table, token_row_mask(table.shape[0], train.trained_token_ids))
        # Pivotal tuning: the token table takes no weight decay, so its frozen rows do not move.
        self.optimizer = build_optimizer(config.optim, self.networks.groups(), total_steps=train.max_train_steps,
                                         no_weight_decay=(TEXT_ENCODER,) if train.train_token_embeddings else ())
        self.state = jax_step.init_state(self.networks, self.optimizer, self.mesh)
        self.frozen = jax_step.frozen_weights(self.networks, self.mesh)
        self.checkpoints = Checkpoints(train.output_dir, train.keep_checkpoints)

    def latest_checkpoint(self):
        return self.checkpoints.latest()

    def restore_latest(self):
        """Restores the newest checkpoint, if any; returns the step to start from."""
        self.state = self.checkpoints.restore_latest(self.state)
        return self.step()

    def step(self):
        return int(_local(self.state.step))

    def save(self, step):
        self.checkpoints.save(step, self.state)

    def batches(self, data_dir, manifest, **options):
        return jax_input.local_batches(data_dir, manifest, **options)

    def compile(self, settings, *, max_grad_norm, grad_accum_steps, jit_compile):
        """The jitted step (always XLA-compiled: --jit_compile changes nothing here); clipping is in the optimizer."""
        del max_grad_norm, grad_accum_steps, jit_compile
        self.train_step = jax_step.make_train_step(
            self.networks, self.optimizer, NoiseSchedule(self.config.model.schedule), settings, self.mesh
        )

    def run(self, iterator, num_steps):
        """Runs `num_steps` steps; returns {metric: (num_steps,) numpy array}, fetched once at the end."""
        history = []
        for _ in range(num_steps):
            batch = jax_mesh.global_batch(next(iterator), self.mesh)
            self.state, metrics = self.train_step(self.state, self.frozen, batch)
            history.append(metrics)
        return {name: np.array([_local(h[name]) for h in history]) for name in history[0]}

    def any_worker(self, flag):
        """True on every process if any process got SIGTERM (they must stop at the same step)."""
        if jax.process_count() == 1:
            return flag
        return bool(np.any(multihost_utils.process_allgather(np.array(flag))))

    def lost_workers_reported(self):
        # JAX's coordination service stops every process when one stops answering.
        return contextlib.nullcontext()

    def trained_networks(self):
        """(unet, text_encoder or None) holding the trained weights, for exports and validation images."""
        jax_step.assign_to_models(self.state, self.networks)
        return self.networks.unet, self.networks.text_encoder

    def compile_for_sampling(self, fn):
        # Eager: a jax.jit of the stateful models would keep the weights it was traced with.
        return fn


def _local(array):
    return jax.device_get(array.addressable_data(0))

"""The TensorFlow engine behind the calls train.py makes of either engine (the JAX one: dbdist/jax_engine/engine.py).

start (strategy) -> scope() to build the networks in -> build_state -> restore_latest ->
batches -> compile -> run(iterator, n) -> save -> trained_networks, with the strategy, the
tf.function loop, the optimizers and tf.train checkpoints all TensorFlow's.
"""

import tensorflow as tf

from dbdist.diffusion import NoiseSchedule
from dbdist.models.text_encoder import token_row_mask, train_only_token_embedding
from dbdist.training import input as train_input
from dbdist.training import lost_worker
from dbdist.training.checkpointing import Checkpoints
from dbdist.training.loop import make_train_loop
from dbdist.training.loss_scale import DynamicLossScale
from dbdist.training.optimizer import build_optimizer
from dbdist.training.step import TrainState
from dbdist.training.strategy import is_chief, make_strategy


class TfEngine:
    name = "tf"

    def __init__(self, config, num_cpu_devices=0, tpu="local"):
        self.config = config
        self.strategy = make_strategy(config.runtime.strategy, num_cpu_devices, tpu)
        self.chief = is_chief(self.strategy)
        self.num_replicas = self.strategy.num_replicas_in_sync
        self.state = self.checkpoints = self.loop = None

    def check_global_batch(self, global_batch):
        train_input.per_replica_batch_size(global_batch, self.num_replicas)

    def scope(self):
        """Where the networks are built: every variable inside the strategy's scope."""
        return self.strategy.scope()

    def build_state(self, models):
        """Optimizers, step and loss scale around the built `models` (the VAE encoder None with cached latents)."""
        config, train = self.config, self.config.train
        total_steps = train.max_train_steps
        with self.strategy.scope():
            state = TrainState(
                unet=models.unet,
                vae_encoder=models.vae_encoder,
                optimizer=build_optimizer(config.optim, total_steps=total_steps),
                schedule=NoiseSchedule(config.model.schedule),
                step=tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step"),
                loss_scale=DynamicLossScale(config.runtime.initial_loss_scale)
                if config.runtime.mixed_precision == "fp16"
                else None,
            )
            if train.trains_text_encoder:
                state.text_encoder = models.text_encoder
                state.text_optimizer = build_optimizer(
                    config.optim, learning_rate=config.optim.text_encoder_learning_rate, total_steps=total_steps
                )
            if train.train_token_embeddings:
                table = train_only_token_embedding(models.text_encoder)
                state.token_rows = (table, token_row_mask(table.shape[0], train.trained_token_ids))
                state.text_optimizer.exclude_from_weight_decay(var_list=[table])
            for variables, optimizer in state.variable_groups():
                optimizer.build(variables)
        self.state = state
        self.checkpoints = Checkpoints(self.strategy, train.output_dir, state, train.keep_checkpoints)

    def latest_checkpoint(self):
        return self.checkpoints.latest()

    def restore_latest(self):
        """Restores the newest checkpoint, if any; returns the step to start from."""
        self.checkpoints.restore_latest()
        return self.step()

    def step(self):
        return int(self.state.step.numpy())

    def save(self, step):
        self.checkpoints.save(step)

    def batches(self, data_dir, manifest, *, global_batch, grad_accum_steps, start_step, **options):
        """An iterator of per-replica batches from optimizer step `start_step` on (accumulation: micro-batches)."""
        dataset = train_input.distributed_dataset(
            self.strategy, data_dir, manifest, global_batch=global_batch, start_step=start_step * grad_accum_steps,
            **options,
        )
        return iter(dataset)

    def compile(self, settings, *, max_grad_norm, grad_accum_steps, jit_compile):
        self.loop = make_train_loop(
            self.strategy, self.state, settings, max_grad_norm=max_grad_norm,
            grad_accum_steps=grad_accum_steps, jit_compile=jit_compile,
        )

    def run(self, iterator, num_steps):
        """Runs `num_steps` steps in one tf.function call; returns {metric: (num_steps,) numpy array}."""
        return {k: v.numpy() for k, v in self.loop(iterator, tf.constant(num_steps)).items()}

    def any_worker(self, flag):
        """True on every worker if any worker got SIGTERM (they must stop at the same step)."""
        strategy = self.strategy
        if strategy.num_replicas_in_sync == 1 or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return flag
        value = strategy.run(lambda: tf.constant(1.0 if flag else 0.0))
        return bool(strategy.reduce(tf.distribute.ReduceOp.SUM, value, axis=None).numpy() > 0)

    def lost_workers_reported(self):
        """A worker that dies makes the others' next collective fail: say so, not TensorFlow's error."""
        return lost_worker.reported(self.strategy, lambda: self.checkpoints.last_step)

    def trained_networks(self):
        """(unet, text_encoder or None) holding the trained weights, for exports and validation images."""
        return self.state.unet, self.state.text_encoder

    def compile_for_sampling(self, fn):
        return tf.function(fn)

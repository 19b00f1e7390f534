"""The real-size (sd-v1) networks under the JAX backend: build, forward and a training gradient, timed.

  KERAS_BACKEND=jax python benchmarks/jax_unet.py --batch=4 --latent=64

Shows the model code is backend-agnostic at full size (the TensorFlow engine is
not involved) and gives JAX-side step times for a GPU. Random weights; prints JSON.
"""

import argparse
import json
import os
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from dbdist.config import model_config  # noqa: E402
from dbdist.diffusion import timestep_embedding  # noqa: E402
from dbdist.models import build_text_encoder, build_unet  # noqa: E402


def timed(fn, *args, repeats=5):
    out = fn(*args)
    jax.block_until_ready(out)
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats, out


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--latent", type=int, default=64)
    args = parser.parse_args()
    config = model_config("sd-v1")
    report = {"backend": keras.backend.backend(), "devices": [str(d) for d in jax.devices()]}
    rng = np.random.default_rng(0)
    latent = rng.normal(size=(args.batch, args.latent, args.latent, 4)).astype("float32")
    t_emb = np.asarray(timestep_embedding(np.arange(args.batch) * 100, 320))
    context = rng.normal(size=(args.batch, 77, 768)).astype("float32")
    for policy in ("float32", "mixed_bfloat16"):
        keras.mixed_precision.set_dtype_policy(policy)
        start = time.perf_counter()
        unet = build_unet(config.unet)
        built = time.perf_counter() - start
        trainable = [v.value for v in unet.trainable_variables]
        non_trainable = [v.value for v in unet.non_trainable_variables]

        @jax.jit
        def forward(trainable, latent, t_emb, context):
            out, _ = unet.stateless_call(trainable, non_trainable, [latent, t_emb, context])
            return out

        @jax.jit
        def loss_and_grad(trainable, latent, t_emb, context, target):
            def loss(weights):
                out, _ = unet.stateless_call(weights, non_trainable, [latent, t_emb, context], training=True)
                return jnp.mean(jnp.square(out.astype("float32") - target))

            return jax.value_and_grad(loss)(trainable)

        fwd_seconds, out = timed(forward, trainable, latent, t_emb, context)
        grad_seconds, (loss, grads) = timed(loss_and_grad, trainable, latent, t_emb, context, latent)
        report[policy] = {
            "unet_parameters": int(unet.count_params()),
            "build_seconds": round(built, 1),
            "forward_seconds": round(fwd_seconds, 4),
            "loss_and_grad_seconds": round(grad_seconds, 4),
            "output_finite": bool(np.isfinite(np.asarray(out, dtype=np.float32)).all()),
            "loss": float(loss),
            "grad_global_norm": float(jnp.sqrt(sum(jnp.sum(jnp.square(g.astype("float32"))) for g in grads))),
        }
        del unet, trainable, grads
    keras.mixed_precision.set_dtype_policy("float32")
    text = build_text_encoder(config.text_encoder)
    tokens = rng.integers(0, 49408, size=(args.batch, 77)).astype("int32")
    seconds, emb = timed(jax.jit(lambda w, t: text.stateless_call(w, [], t)[0]), [v.value for v in text.weights], tokens)
    report["text_encoder"] = {"forward_seconds": round(seconds, 4), "shape": list(emb.shape)}
    print(json.dumps(report, indent=1))
    out_dir = os.environ.get("OUT")
    if out_dir:
        with open(os.path.join(out_dir, "jax_unet.json"), "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()

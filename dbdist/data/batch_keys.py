"""Keys of the flat training batch the reader yields (no TensorFlow: the engine-free loss reads them).

Every value has the example axis first, and instance and class examples stay under
separate keys (a JAX engine shards every batch key along axis 0, so a concatenation
of both streams would be split wrongly). `features` re-exports these names.
"""

# Pixel records give *_PIXELS, latent records *_LATENT_MEAN and *_LATENT_LOGVAR instead.
INSTANCE_PIXELS = "instance_pixels"
INSTANCE_LATENT_MEAN = "instance_latent_mean"
INSTANCE_LATENT_LOGVAR = "instance_latent_logvar"
INSTANCE_EMBEDDING = "instance_embedding"
INSTANCE_TOKEN_IDS = "instance_token_ids"
CLASS_PIXELS = "class_pixels"
CLASS_LATENT_MEAN = "class_latent_mean"
CLASS_LATENT_LOGVAR = "class_latent_logvar"
CLASS_EMBEDDING = "class_embedding"
CLASS_TOKEN_IDS = "class_token_ids"
# int32 position of each example within the global batch (0..G-1); keys per-example randomness.
EXAMPLE_POSITION = "position"

# Each example's randomness, drawn by the input pipeline (dbdist/data/example_noise.py):
# float32 (h, w, c) standard normals for sampling the latent from the VAE posterior,
# float32 (h, w, c) diffusion noise (offset noise already added), int32 timestep.
INSTANCE_VAE_NOISE = "instance_vae_noise"
INSTANCE_NOISE = "instance_noise"
INSTANCE_TIMESTEP = "instance_timestep"
CLASS_VAE_NOISE = "class_vae_noise"
CLASS_NOISE = "class_noise"
CLASS_TIMESTEP = "class_timestep"

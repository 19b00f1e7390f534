"""Bytes per serialized example for sd-v1 / sd-v2 shapes: python benchmarks/record_bytes.py (either record format)."""
import inspect as python_inspect
import numpy as np
from dbdist.config import model_config
from dbdist.data import features, images

new_format = "prompt_id" in python_inspect.signature(features.serialize_example).parameters
for preset in ("sd-v1", "sd-v2"):
    m = model_config(preset)
    length, width = m.embedding_shape
    latent = (m.latent_size, m.latent_size, m.vae.latent_channels)
    zeros = np.zeros(latent, np.float32)
    common = dict(kind=0, index=1234, source="IMG_0001.jpg", concept=0)
    if new_format:
        common["prompt_id"] = 0
    else:
        common.update(prompt="a photo of sks dog", token_ids=np.arange(length) % 49408,
                      embedding=np.zeros((length, width), np.float32))
    latent_record = len(features.serialize_example(**common, latents=(zeros, zeros), flipped_latents=(zeros, zeros)))
    png = np.zeros((8, 8, 3), np.uint8)
    without_png = len(features.serialize_example(**common, image=png)) - len(images.encode_png(png))
    print(f"{preset}: embedding {length}x{width} ({length * width * 4} B); "
          f"latent record (+flipped, {latent}): {latent_record} B; pixel record without its PNG bytes: {without_png} B")

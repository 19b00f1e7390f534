"""Image files + prompt ids -> serialized records -> bounded shards, streaming with flat memory.

Images are read, decoded and resized by a thread pool (PIL releases the GIL while it
decodes and resamples) one chunk ahead of the main thread, which runs, with cached
latents, the VAE encoder; PNG encoding and serialization go back to the pool. The
text embeddings are not here: they are stored once per prompt, in the prompt table. At most two chunks are alive
at once, and shards are streamed to disk, so memory does not grow with the number
of images.
"""

import concurrent.futures
import dataclasses
import os

import numpy as np
from dbdist.data import features, images, writer


@dataclasses.dataclass(frozen=True)
class Source:
    """One image to turn into a record."""

    path: str
    prompt: str
    kind: int      # features.KIND_INSTANCE / KIND_CLASS
    concept: int


@dataclasses.dataclass(frozen=True)
class EncodeSettings:
    resolution: int
    cache_latents: bool = False
    random_flip: bool = False     # with cache_latents: also cache the mirrored crop's latents
    min_size: int = 0             # reject images whose shorter side is below this
    chunk_size: int = 32          # images per model call
    workers: int = 0              # decode threads; 0: one per CPU


def _latents(vae_encoder, batch_uint8):
    mean, logvar = vae_encoder.predict_on_batch(batch_uint8.astype(np.float32) / 127.5 - 1.0)
    return np.asarray(mean, np.float32), np.asarray(logvar, np.float32)


class RecordPipeline:
    """Writes the records of `sources` into shards of one kind each; see the module doc.

    `prompt_ids` maps each prompt to its row of the prompt table.
    """

    def __init__(self, settings: EncodeSettings, prompt_ids, vae_encoder=None):
        if settings.cache_latents and vae_encoder is None:
            raise ValueError("cache_latents needs the VAE encoder")
        self.settings, self.prompt_ids, self.vae_encoder = settings, prompt_ids, vae_encoder
        self.pool = concurrent.futures.ThreadPoolExecutor(settings.workers or os.cpu_count() or 1)

    def _load(self, source):
        crop = "center" if self.settings.cache_latents else "none"
        return images.load_image(source.path, self.settings.resolution, crop=crop, min_size=self.settings.min_size,
                                 max_aspect=features.MAX_STORED_ASPECT)

    def _records(self, chunk, pixels, first_index):
        """Serialized records of one chunk (model calls here, PNG encoding in the pool)."""
        payloads = [dict(image=p) for p in pixels]
        if self.settings.cache_latents:
            batch = np.stack(pixels)
            mean, logvar = _latents(self.vae_encoder, batch)
            flipped = _latents(self.vae_encoder, batch[:, :, ::-1]) if self.settings.random_flip else None
            payloads = [dict(latents=(mean[i], logvar[i]),
                             flipped_latents=(flipped[0][i], flipped[1][i]) if flipped else None)
                        for i in range(len(chunk))]
        serialize = lambda i: features.serialize_example(
            prompt_id=self.prompt_ids[chunk[i].prompt], kind=chunk[i].kind, index=first_index + i, source=os.path.basename(chunk[i].path),
            concept=chunk[i].concept, **payloads[i])
        return list(self.pool.map(serialize, range(len(chunk))))

    def write(self, output_dir, kind_name, sources, max_shard_bytes, on_progress=None):
        """Shard names of `sources` (all of one kind, in index order) written to `output_dir`."""
        size = self.settings.chunk_size
        chunks = [sources[i:i + size] for i in range(0, len(sources), size)]
        load = lambda chunk: [self.pool.submit(self._load, s) for s in chunk]
        with writer.ShardWriter(output_dir, kind_name, max_shard_bytes) as out:
            pending = load(chunks[0]) if chunks else []
            for k, chunk in enumerate(chunks):
                pixels = [f.result() for f in pending]
                pending = load(chunks[k + 1]) if k + 1 < len(chunks) else []  # decode ahead
                for record in self._records(chunk, pixels, k * size):
                    out.write(record)
                if on_progress:
                    on_progress(len(chunk))
            return out.close()

    def close(self):
        self.pool.shutdown(wait=True, cancel_futures=True)

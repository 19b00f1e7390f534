"""The prompt table: each distinct prompt's token ids and text embedding, stored once per record set.

An embedding is large (77 x 768 float32 = 231 KiB for sd-v1, 77 x 1024 = 308 KiB for sd-v2)
while a data set has few distinct prompts (one per concept and kind, unless images carry
captions). So records carry a `prompt_id`, and `prompts-*.tfrecord` holds one record per
distinct prompt, row i being prompt id i. The reader gathers each example's embedding and
token ids from this table, which it keeps in memory.
"""

import dataclasses

import numpy as np

from dbdist.data import features, writer

KIND_NAME = "prompts"  # shard names: prompts-00000.tfrecord, ...


@dataclasses.dataclass(frozen=True, eq=False)
class PromptTable:
    """Row i: prompt id i's text, token ids (max_length,) int32 and embedding (max_length, width) float32."""

    prompts: tuple
    token_ids: np.ndarray
    embeddings: np.ndarray

    def __len__(self):
        return len(self.prompts)

    def join(self, example):
        """`example` (numpy, with "prompt_id") plus its "prompt", "token_ids" and "embedding"."""
        ids = np.asarray(example["prompt_id"])
        prompts = np.asarray(self.prompts, dtype=object)[ids]
        return {**example, "prompt": prompts, "token_ids": self.token_ids[ids], "embedding": self.embeddings[ids]}


def write_prompt_table(output_dir, prompts, token_ids, encode, max_shard_bytes, chunk_size=32):
    """Shard names of the table of `prompts` (row i is prompt id i), encoded a chunk at a time.

    `token_ids` maps each prompt to its (max_length,) ids; `encode` maps (n, max_length)
    ids to (n, max_length, width) embeddings (the text encoder).
    """
    with writer.ShardWriter(output_dir, KIND_NAME, max_shard_bytes) as out:
        for start in range(0, len(prompts), chunk_size):
            chunk = prompts[start:start + chunk_size]
            embeddings = np.asarray(encode(np.stack([token_ids[p] for p in chunk])), np.float32)
            for offset, (prompt, embedding) in enumerate(zip(chunk, embeddings)):
                out.write(features.serialize_prompt(prompt_id=start + offset, prompt=prompt,
                                                    token_ids=token_ids[prompt], embedding=embedding))
        return out.close()

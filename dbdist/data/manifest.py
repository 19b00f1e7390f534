"""`manifest.json`: what a data directory holds and which model it was made for.

It is written last, so its presence means the shards it lists are complete. The
reader checks it against the model before training (`check_compatible`), because
cached text embeddings are only valid for the text encoder that made them.
"""

import dataclasses
import json
import os

import tensorflow as tf

from dbdist.config import LEGACY_PAD_TOKEN_ID
from dbdist.data import features, writer
from dbdist.errors import MissingInputError, UserError

# 2: concepts, record_format (pixels / cached latents), pixel records keep the aspect ratio.
# 3: weights and encoder_fingerprints (which networks made the embeddings and latents);
#    each distinct prompt's token ids and embedding stored once, in the prompt table.
FORMAT_VERSION = 3
REBUILD = "remake it with python -m dbdist.make_tfrecords (same flags, same --output_dir)"
MANIFEST_NAME = writer.MANIFEST_NAME


@dataclasses.dataclass(frozen=True, kw_only=True)
class ConceptCounts:
    """One concept (subject) of a data directory and how many records it has."""

    instance_prompt: str            # default prompt (images may carry their own caption)
    class_prompt: str               # "" without prior preservation
    instance_dir: str
    class_dir: str
    num_instance: int
    num_class: int


@dataclasses.dataclass(frozen=True, kw_only=True)
class Manifest:
    """Contents of a data directory made by `python -m dbdist.make_tfrecords`."""

    format_version: int = FORMAT_VERSION
    preset: str                     # model preset whose text encoder made the embeddings
    resolution: int                 # side of the square training crops, in pixels
    embedding_shape: tuple          # (max_length, width) of each text embedding
    max_length: int                 # length of token_ids (== embedding_shape[0])
    # The id the prompts' token_ids were padded with (the text encoder's own tokenizer's); the
    # stored embeddings were encoded from those ids. A manifest without it was padded with
    # LEGACY_PAD_TOKEN_ID, whatever the preset.
    pad_token_id: int = LEGACY_PAD_TOKEN_ID
    record_format: str = features.PIXELS  # "pixels" or "latents" (cached VAE posteriors)
    latent_shape: tuple = ()        # (h, w, channels) of cached latents
    flipped_latents: bool = False   # cached latents include the mirrored crop's (made with --random_flip)
    concepts: tuple = ()            # ConceptCounts, in the order of the records' `concept` field
    num_instance: int
    num_class: int
    instance_shards: tuple          # shard base names, relative to the data directory
    class_shards: tuple
    prompt_shards: tuple            # the prompt table (dbdist/data/prompt_table.py)
    num_prompts: int                # rows of the prompt table: prompt ids 0..num_prompts-1
    created_by: str                 # e.g. "dbdist 0.1.0 make_tfrecords"
    weights: str = ""               # make_tfrecords' --weights ("" = the preset's default weights)
    # (network, fingerprint) pairs of the text encoder (and, for cached latents, the VAE encoder)
    # that encoded the records; see dbdist/weights/fingerprint.py. A JSON object in the file.
    encoder_fingerprints: tuple = ()

    def __post_init__(self):
        # JSON gives lists and dicts; keep the dataclass hashable and comparable with tuples.
        for name in ("instance_shards", "class_shards", "prompt_shards"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        for name in ("embedding_shape", "latent_shape"):
            object.__setattr__(self, name, tuple(int(d) for d in getattr(self, name)))
        concepts = tuple(c if isinstance(c, ConceptCounts) else ConceptCounts(**c) for c in self.concepts)
        object.__setattr__(self, "concepts", concepts)
        if len(self.embedding_shape) != 2 or self.embedding_shape[0] != self.max_length:
            raise ValueError(f"embedding_shape must be (max_length={self.max_length}, width), "
                             f"got {self.embedding_shape}")
        self.layout  # checks record_format, latent_shape, flipped_latents
        object.__setattr__(self, "encoder_fingerprints", tuple(sorted(dict(self.encoder_fingerprints).items())))
        bad = {k: v for k, v in self.encoder_fingerprints
               if k not in ("text_encoder", "vae_encoder") or not str(v).startswith("sha256:")}
        if bad:
            raise ValueError(f"encoder_fingerprints must map text_encoder/vae_encoder to 'sha256:...', got {bad}")
        if self.num_instance < 1 or not self.instance_shards:
            raise ValueError(f"a data directory needs instance examples, got num_instance="
                             f"{self.num_instance} in shards {self.instance_shards}")
        if self.num_prompts < 1 or not self.prompt_shards:
            raise ValueError(f"a data directory needs its prompt table, got num_prompts={self.num_prompts} "
                             f"in shards {self.prompt_shards}")
        if (self.num_class > 0) != bool(self.class_shards):
            raise ValueError(f"num_class={self.num_class} does not match class_shards={self.class_shards}")
        if not concepts:
            raise ValueError("a manifest needs at least one concept")
        totals = (sum(c.num_instance for c in concepts), sum(c.num_class for c in concepts))
        if totals != (self.num_instance, self.num_class):
            raise ValueError(f"the concepts hold {totals[0]} instance and {totals[1]} class records; "
                             f"num_instance={self.num_instance}, num_class={self.num_class}")
        if self.num_class and any(c.num_class == 0 for c in concepts):
            raise ValueError("every concept needs class records when any has them (prior preservation "
                             f"pairs each instance example with a class example of its concept): {concepts}")

    @property
    def layout(self):
        """How to decode this directory's records."""
        return features.RecordLayout(self.resolution, self.embedding_shape, self.record_format,
                                     self.latent_shape, self.flipped_latents)

    @property
    def fingerprints(self):
        """{network: fingerprint} of the networks that encoded the records."""
        return dict(self.encoder_fingerprints)

    @property
    def has_class(self):
        return self.num_class > 0

    @property
    def instance_prompt(self):
        return self.concepts[0].instance_prompt

    @property
    def class_prompt(self):
        return self.concepts[0].class_prompt

    def shards(self, kind_name):
        """Shard base names of 'instance', 'class' or 'prompts' (the prompt table)."""
        return {"instance": self.instance_shards, "class": self.class_shards, "prompts": self.prompt_shards}[kind_name]

    def num_examples(self, kind_name):
        return {"instance": self.num_instance, "class": self.num_class}[kind_name]


def write_manifest(data_dir, manifest):
    """Writes `<data_dir>/manifest.json` atomically; call it after every shard is in place."""
    fields = dataclasses.asdict(manifest)
    fields["encoder_fingerprints"] = manifest.fingerprints
    text = json.dumps(fields, indent=2, sort_keys=True) + "\n"
    writer.write_bytes_atomically(os.path.join(str(data_dir), MANIFEST_NAME), text.encode("utf-8"))


def read_manifest(data_dir):
    """Reads and checks `<data_dir>/manifest.json`, including that its shards exist."""
    data_dir = str(data_dir)
    path = os.path.join(data_dir, MANIFEST_NAME)
    if not tf.io.gfile.exists(path):
        raise MissingInputError(f"{data_dir} has no {MANIFEST_NAME}; "
                                "run python -m dbdist.make_tfrecords first")
    with tf.io.gfile.GFile(path, "rb") as f:
        text = f.read()
    try:
        fields = json.loads(text)
    except ValueError as err:
        raise UserError(f"{path}: invalid JSON ({err})") from err
    if not isinstance(fields, dict):
        raise UserError(f"{path}: expected a JSON object, got {type(fields).__name__}")
    if fields.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{path}: format_version {fields.get('format_version')!r} is not supported; "
                         f"this dbdist reads version {FORMAT_VERSION}: {REBUILD}")
    fields.setdefault("pad_token_id", LEGACY_PAD_TOKEN_ID)  # made before pad ids were recorded
    known = [f.name for f in dataclasses.fields(Manifest)]
    missing = sorted(set(known) - set(fields))
    if missing:
        raise UserError(f"{path}: missing fields {', '.join(missing)}")
    unknown = sorted(set(fields) - set(known))
    if unknown:
        raise UserError(f"{path}: unknown fields {', '.join(unknown)}; expected only {', '.join(known)}")
    try:
        manifest = Manifest(**fields)
    except (TypeError, ValueError) as err:
        raise UserError(f"{path}: {err}") from err
    absent = [name for name in manifest.instance_shards + manifest.class_shards + manifest.prompt_shards
              if not tf.io.gfile.exists(os.path.join(data_dir, name))]
    if absent:
        raise MissingInputError(f"{path} lists shards that do not exist in {data_dir}: {', '.join(absent)}")
    return manifest


def check_compatible(manifest, *, preset, resolution, embedding_shape, pad_token_id, data_dir=None):
    """Raises UserError if the data was made for another preset, resolution or text encoder, or
    with prompts padded otherwise than the model's tokenizer pads them."""
    made = (manifest.preset, manifest.resolution, tuple(manifest.embedding_shape))
    wanted = (preset, int(resolution), tuple(int(d) for d in embedding_shape))
    where = f"data_dir {data_dir}" if data_dir else "the data"
    if made != wanted:
        raise UserError(f"{where} was made for preset '{made[0]}' at {made[1]} px with embeddings "
                         f"{made[2]}; the model is '{wanted[0]}' at {wanted[1]} px with {wanted[2]}")
    if manifest.pad_token_id != pad_token_id:
        # sd-v2 records made before its prompts were padded as OpenCLIP pads (with 0) hold
        # embeddings of end-token padding: training on them would condition on other embeddings
        # than the ones generate feeds the model.
        raise UserError(f"{where} holds prompts padded with token id {manifest.pad_token_id} and their embeddings; "
                         f"the '{preset}' text encoder's tokenizer pads with {pad_token_id}: {REBUILD}")

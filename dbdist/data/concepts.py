"""Concepts (subjects) to train, from --concepts_file or the single-concept flags, and captions.

A concepts file is a JSON list of objects:
  {"instance_dir": ..., "instance_prompt": ..., "class_dir": ..., "class_prompt": ...,
   "num_class_images": 200}
`class_dir` and `class_prompt` may be "" (no prior preservation); `num_class_images`
is optional (default: --num_class_images). Relative folders are relative to the file. An image may carry its own caption in a
sidecar text file beside it (`dog1.jpg` + `dog1.txt`), used instead of the prompt.
"""

import dataclasses
import json
import os

import tensorflow as tf

from dbdist.data import images
from dbdist.errors import MissingInputError, UserError

REQUIRED_FIELDS = ("instance_dir", "instance_prompt", "class_dir", "class_prompt")
OPTIONAL_FIELDS = ("num_class_images",)


@dataclasses.dataclass(frozen=True)
class Concept:
    instance_dir: str
    instance_prompt: str
    class_dir: str = ""
    class_prompt: str = ""
    num_class_images: int = 0   # top class_dir up to this many images with the base model

    @property
    def has_class(self):
        return bool(self.class_dir)


def check_concepts(concepts, where):
    """Errors for prompts and class folders that cannot work together; `where` names the source."""
    if not concepts:
        raise UserError(f"{where}: no concepts; expected at least one")
    for i, c in enumerate(concepts):
        name = f"{where}: concept {i}"
        if not c.instance_prompt.strip():
            raise UserError(f"{name}: instance_prompt is empty; expected a prompt naming the subject, "
                             "e.g. 'a photo of sks dog'")
        if c.class_dir and not c.class_prompt.strip():
            raise UserError(f"{name}: class_dir {c.class_dir} needs a class_prompt (e.g. 'a photo of dog')")
        if c.class_prompt.strip() and not c.class_dir:
            raise UserError(f"{name}: class_prompt {c.class_prompt!r} was given without a class_dir")
        if c.num_class_images < 0:
            raise UserError(f"{name}: num_class_images must be >= 0, got {c.num_class_images}")
        if c.num_class_images and not c.class_dir:
            raise UserError(f"{name}: num_class_images={c.num_class_images} needs a class_dir to draw into")
    if len({c.has_class for c in concepts}) > 1:
        without = [i for i, c in enumerate(concepts) if not c.has_class]
        raise UserError(f"{where}: concepts {without} have no class_dir but others do; prior preservation "
                         "pairs every instance example with a class example of its concept, so give all "
                         "concepts a class_dir or none")
    by_dir = {}
    for i, c in enumerate(concepts):
        if not c.class_dir:
            continue
        key = c.class_dir.rstrip("/")
        if key in by_dir and concepts[by_dir[key]].class_prompt != c.class_prompt:
            j = by_dir[key]
            raise UserError(f"{where}: concepts {j} and {i} share class_dir {c.class_dir} with different "
                             f"class prompts ({concepts[j].class_prompt!r} vs {c.class_prompt!r}); the images "
                             "of one folder have one prompt: give each class prompt its own folder")
        by_dir.setdefault(key, i)
    return list(concepts)


def read_concepts_file(path, default_num_class_images=0):
    """The concepts of a JSON concepts file (local or gs://), checked."""
    path = str(path)
    if not tf.io.gfile.exists(path):
        raise MissingInputError(f"--concepts_file {path} does not exist")
    with tf.io.gfile.GFile(path, "r") as f:
        text = f.read()
    try:
        items = json.loads(text)
    except ValueError as err:
        raise UserError(f"{path}: invalid JSON ({err}); expected a list of concept objects") from err
    if not isinstance(items, list):
        raise UserError(f"{path}: expected a JSON list of concept objects, got {type(items).__name__}")
    concepts = []
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise UserError(f"{path}: concept {i} is {type(item).__name__}; expected an object with "
                             f"{', '.join(REQUIRED_FIELDS)}")
        missing = [f for f in REQUIRED_FIELDS if f not in item]
        if missing:
            raise UserError(f"{path}: concept {i} is missing {', '.join(missing)}; each concept needs "
                             f"{', '.join(REQUIRED_FIELDS)} (class ones may be \"\") and optionally num_class_images")
        unknown = sorted(set(item) - set(REQUIRED_FIELDS) - set(OPTIONAL_FIELDS))
        if unknown:
            raise UserError(f"{path}: concept {i} has unknown fields {', '.join(unknown)}; expected "
                             f"{', '.join(REQUIRED_FIELDS + OPTIONAL_FIELDS)}")
        for field in REQUIRED_FIELDS:
            if not isinstance(item[field], str):
                raise UserError(f"{path}: concept {i}: {field} must be a string, got {item[field]!r}")
        num = item.get("num_class_images", default_num_class_images)
        if isinstance(num, bool) or not isinstance(num, int):
            raise UserError(f"{path}: concept {i}: num_class_images must be an integer, got {num!r}")
        if not item["instance_dir"]:
            raise UserError(f"{path}: concept {i}: instance_dir is empty")
        concepts.append(Concept(_relative_to(path, item["instance_dir"]), item["instance_prompt"],
                                _relative_to(path, item["class_dir"]), item["class_prompt"], num))
    return check_concepts(concepts, path)


def _relative_to(concepts_file, folder):
    """Folders in a concepts file are relative to the file's own folder (unless absolute or a URL)."""
    if not folder or "://" in folder or os.path.isabs(folder):
        return folder
    return os.path.join(os.path.dirname(concepts_file), folder)


def caption_path(image_path):
    return os.path.splitext(str(image_path))[0] + ".txt"


def read_caption(image_path, default_prompt):
    """The sidecar caption of an image if it has one, else `default_prompt`."""
    path = caption_path(image_path)
    if not tf.io.gfile.exists(path):
        return default_prompt
    with tf.io.gfile.GFile(path, "r") as f:
        caption = " ".join(f.read().split())
    if not caption:
        raise UserError(f"{path}: caption file is empty; write the image's prompt in it or delete it")
    return caption


def list_examples(directory, default_prompt):
    """[(image path, prompt)] of a folder, captions from sidecar .txt files."""
    return [(path, read_caption(path, default_prompt)) for path in images.list_images(directory)]

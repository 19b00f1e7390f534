"""What `dbdist.evaluate --judge=paper` draws, and the real instance photos it compares them with.

Prompts: the run's instance prompt and four of the DreamBooth dataset's recontextualisation
prompts ("<instance prompt> in the jungle", ...). CLIP-T scores each image against its prompt
with the identifier removed ("a photo of sks dog in the snow" -> "a photo of dog in the snow"):
CLIP has never seen the rare token, which would only add noise to the text embedding. The
identifier is what the instance prompt adds to the class prompt; without a class prompt the
prompt is used whole. (The paper, Sec. 4.1, says only "prompt and image CLIP embeddings".)
"""

import numpy as np

from dbdist.data import features, images
from dbdist.data.reader import read_all_examples
from dbdist.errors import UserError

RECONTEXT = {"jungle": "in the jungle", "snow": "in the snow", "beach": "on the beach",
             "street": "on a cobblestone street"}


def prompts(instance_prompt):
    """{key: prompt}; keys are 'subject' and 'recontext/<place>'."""
    if not instance_prompt:
        raise UserError("--judge=paper draws the run's subject, but its records have no instance prompt; "
                        "expected records made with --instance_prompt")
    out = {"subject": instance_prompt}
    out.update({f"recontext/{place}": f"{instance_prompt} {where}" for place, where in RECONTEXT.items()})
    return out


def identifier_words(instance_prompt, class_prompt):
    """The words the instance prompt adds to the class prompt ("a photo of sks dog" - "a photo of dog" = {"sks"})."""
    if not class_prompt:
        return set()
    return set(instance_prompt.split()) - set(class_prompt.split())


def clip_t_prompt(prompt, identifier):
    """`prompt` without the identifier's words, as CLIP-T reads it."""
    return " ".join(word for word in prompt.split() if word not in identifier)


def real_instance_images(data_dir, manifest, instance_dir=""):
    """uint8 (H, W, 3) photos of the subject: --instance_dir's, else the pixel records' (first concept)."""
    if instance_dir:
        return [np.asarray(images.read_image(path)) for path in images.list_images(instance_dir)]
    if manifest.record_format != features.PIXELS:
        raise UserError(f"the run's records {data_dir} hold cached VAE latents ({manifest.record_format!r}), not "
                        "the instance photos that DINO and CLIP-I compare the drawn images with; expected "
                        f"--instance_dir (the records were made from {manifest.concepts[0].instance_dir!r})")
    examples = read_all_examples(data_dir, manifest, "instance")
    return [np.asarray(image) for image, concept in zip(examples["image"], examples["concept"]) if concept == 0]


def embed(embedders, drawn, wanted, identifier):
    """{key: {"dino", "clip_image", "clip_text"}} of the drawn images of each prompt, for subject_scores.score."""
    texts = embedders.clip_texts([clip_t_prompt(wanted[key], identifier) for key in drawn])
    return {key: {"dino": embedders.dino_images(pictures), "clip_image": embedders.clip_images(pictures),
                  "clip_text": text}
            for (key, pictures), text in zip(drawn.items(), texts)}

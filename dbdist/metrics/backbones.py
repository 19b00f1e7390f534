"""keras-hub backbones that embed images and prompts for the paper's scores (subject_scores.py).

The DreamBooth paper (arXiv:2208.12242, Sec. 4.1) used DINO (v1) ViT-S/16 for its DINO score.
keras-hub 0.32 ships no DINO v1 model, only DINOv2 and DINOv3: the default is DINOv2 ViT-S/14
(`dinov2_small`), the same size of network trained by DINO's successor, so our DINO numbers are
close to, not equal to, the paper's. As we read it, the paper does not name its CLIP variant; the default is
CLIP ViT-B/32 (`clip_vit_base_patch32`). Both download from keras-hub on first use (then cached).
A preset may also be a local directory written by `save_to_preset` (the tests' tiny random models).

Only keras and keras-hub run the networks (no tf/jax here), so any Keras backend works.
"""

import keras
import numpy as np

DEFAULT_DINO_PRESET = "dinov2_small"
DEFAULT_CLIP_PRESET = "clip_vit_base_patch32"
# Images per forward pass: bounds memory on large presets, and is plenty for a few dozen images.
BATCH_SIZE = 16


def _import_keras_hub():
    try:
        import keras_hub
    except ImportError as err:
        from dbdist.errors import UserError

        raise UserError("the DINO / CLIP-I / CLIP-T scores need keras-hub; expected it installed "
                        "(pip install -c constraints.txt -e \".[paper-metrics]\")") from err
    return keras_hub


class SubjectEmbedders:
    """DINO [CLS] embeddings of images, CLIP embeddings of images and of prompts."""

    def __init__(self, dino, dino_converter, clip, clip_preprocessor):
        self.dino, self.dino_converter = dino, dino_converter
        self.clip, self.clip_preprocessor = clip, clip_preprocessor

    @classmethod
    def from_presets(cls, dino_preset, clip_preset):
        """Loads (downloading on first use) a DINOv2 backbone and a CLIP backbone with their preprocessing."""
        keras_hub = _import_keras_hub()
        return cls(
            dino=keras_hub.models.DINOV2Backbone.from_preset(dino_preset),
            dino_converter=keras_hub.layers.DINOV2ImageConverter.from_preset(dino_preset),
            clip=keras_hub.models.CLIPBackbone.from_preset(clip_preset),
            clip_preprocessor=keras_hub.models.CLIPPreprocessor.from_preset(clip_preset),
        )

    def dino_images(self, images):
        """(N, D) [CLS] embeddings (token 0 of the backbone's normalised sequence) of uint8 (H, W, 3) images."""
        return self._embed(images, self.dino_converter, self.dino.image_shape,
                           lambda x: self.dino({"images": x})[:, 0, :])

    def clip_images(self, images):
        """(N, C) CLIP image embeddings (pooled, projected) of uint8 (H, W, 3) images."""
        return self._embed(images, self.clip_preprocessor.image_converter, self.clip.vision_encoder.image_shape,
                           self.clip.get_vision_embeddings)

    def clip_texts(self, prompts):
        """(N, C) CLIP text embeddings (pooled at the end token, projected) of prompts."""
        tokens = self.clip_preprocessor({"images": None, "prompts": list(prompts)})["token_ids"]
        return np.asarray(keras.ops.convert_to_numpy(self.clip.get_text_embeddings(tokens)), np.float32)

    @staticmethod
    def _embed(images, converter, image_shape, network):
        # The converter crops to the square and resizes to its preset's size one image at a time,
        # so real photos of any shape and generated images can be embedded together.
        size = tuple(image_shape[:2])
        converted = []
        for image in images:
            x = converter(keras.ops.convert_to_tensor(np.asarray(image, np.float32)[None]))
            if tuple(x.shape[1:3]) != size:  # a converter saved without image_size: fit the network's input
                x = keras.ops.image.resize(x, size, interpolation="bilinear", antialias=True)
            converted.append(keras.ops.convert_to_numpy(x))
        converted = np.concatenate(converted)
        out = [keras.ops.convert_to_numpy(network(converted[i:i + BATCH_SIZE]))
               for i in range(0, len(converted), BATCH_SIZE)]
        return np.concatenate(out).astype(np.float32)

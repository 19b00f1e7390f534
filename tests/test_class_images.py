"""Class-image starting noise: keyed by everything in the file name, nothing else."""

import dataclasses

import numpy as np
import pytest

from dbdist.class_images import ClassImageSettings, class_image_name, initial_noise

SETTINGS = ClassImageSettings(num_steps=50, guidance_scale=7.5, global_batch=4, seed=0)
SHAPE = (8, 8, 4)


def _noise(prompt="a photo of dog", settings=SETTINGS, preset="sd-v1", index=0):
    return initial_noise(prompt, settings, preset, [index], SHAPE)[0]


@pytest.mark.parametrize("changed", [
    dict(settings=dataclasses.replace(SETTINGS, num_steps=25)),
    dict(settings=dataclasses.replace(SETTINGS, guidance_scale=5.0)),
    dict(settings=dataclasses.replace(SETTINGS, seed=1)),
    dict(preset="sd-v2"),
    dict(prompt="a photo of cat"),
    dict(index=1),
], ids=["steps", "guidance", "seed", "preset", "prompt", "index"])
def test_what_changes_the_file_name_changes_the_starting_noise(changed):
    # A new name is drawn again; from the same noise it would be a near-copy of the old file.
    assert class_image_name(**{"prompt": "a photo of dog", "index": 0, "settings": SETTINGS, "preset": "sd-v1",
                               **changed}) != class_image_name("a photo of dog", 0, SETTINGS, "sd-v1")
    a, b = _noise(), _noise(**changed)
    # Independent standard normals: the correlation of 256 pairs is ~N(0, 1/16); 0.5 is 8 sigma.
    assert abs(np.corrcoef(a.ravel(), b.ravel())[0, 1]) < 0.5


def test_the_batch_size_changes_neither_name_nor_noise():
    other_batch = dataclasses.replace(SETTINGS, global_batch=8)
    assert class_image_name("a photo of dog", 3, other_batch, "sd-v1") == class_image_name("a photo of dog", 3, SETTINGS, "sd-v1")
    np.testing.assert_array_equal(_noise(settings=other_batch, index=3), _noise(index=3))
    together = initial_noise("a photo of dog", SETTINGS, "sd-v1", [2, 3], SHAPE)
    np.testing.assert_array_equal(together[1], _noise(index=3))  # image i does not depend on its batch

"""make_tfrecords' data-at-scale features through the command: concepts and captions,
class-image generation (resumable, replica-independent), cached latents, image modes,
and the bad inputs of each."""

import dataclasses
import json
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
from absl import app
from commands import run_command
from distributed_runs import REPO
from PIL import Image

from dbdist import generate
from dbdist.config import model_config
from dbdist.data import features
from dbdist.data.manifest import read_manifest
from dbdist.data.reader import CorruptShardError, make_train_dataset, read_all_examples, read_prompt_table
from dbdist.models import build_models
from dbdist.sampling import Sampler
from dbdist.weights.pretrained import RANDOM_INIT_SEED
from dbdist.data.example_noise import NoiseSpec, with_noise
from dbdist.diffusion.dreambooth_loss import LossSettings, dreambooth_loss
from dbdist.weights.keras_cv_h5 import save_keras_cv_h5

GENERATED = re.compile(r"class-\d{5}-[0-9a-f]{10}\.png")
CLASS_FLAGS = dict(class_num_steps=2, class_batch_size=2)


def _pixels(path):
    return np.asarray(Image.open(path), int)


def _save_networks(models, folder):
    for name in ("unet", "text_encoder", "vae_encoder", "vae_decoder"):
        if getattr(models, name) is not None:
            save_keras_cv_h5(getattr(models, name), folder / f"{name}.h5")


def _generated(folder):
    return sorted(p.name for p in folder.iterdir() if GENERATED.fullmatch(p.name))


@pytest.fixture(scope="module")
def two_concepts(tmp_path_factory, sample_images):
    """A concepts file: concept 0 has a caption on one image and 2 class images to draw;
    concept 1 has an empty class folder to fill with 3."""
    root = tmp_path_factory.mktemp("concepts")
    shutil.copytree(sample_images[0], root / "sks")
    shutil.copytree(sample_images[1], root / "ball")
    (root / "sks" / "instance-001.txt").write_text("a photo of sks ball\n  in the snow ")
    shutil.copytree(sample_images[0], root / "zzx", ignore=shutil.ignore_patterns("instance-002.png"))
    concepts = [
        dict(instance_dir="sks", instance_prompt="a photo of sks ball", class_dir="ball",
             class_prompt="a photo of ball", num_class_images=6),
        dict(instance_dir="zzx", instance_prompt="a photo of zzx toy", class_dir="toy", class_prompt="a photo of toy",
             num_class_images=3),
    ]
    (root / "concepts.json").write_text(json.dumps(concepts))
    return root


@pytest.fixture(scope="module")
def concept_records(two_concepts, vocab_path):
    out = two_concepts / "records"
    run_command("make_tfrecords", model="tiny", concepts_file=two_concepts / "concepts.json", output_dir=out,
                vocab_path=vocab_path, **CLASS_FLAGS)
    return out


def test_concepts_captions_and_drawn_class_images(two_concepts, concept_records):
    assert len(_generated(two_concepts / "ball")) == 2 and len(_generated(two_concepts / "toy")) == 3
    m = read_manifest(concept_records)
    assert [(c.num_instance, c.num_class) for c in m.concepts] == [(3, 6), (2, 3)]
    assert [c.class_prompt for c in m.concepts] == ["a photo of ball", "a photo of toy"]
    assert m.concepts[1].instance_dir == str(two_concepts / "zzx")  # relative to the concepts file
    inst = read_all_examples(concept_records, m, "instance")
    assert inst["concept"].tolist() == [0, 0, 0, 1, 1]
    assert inst["prompt"].tolist() == ["a photo of sks ball", "a photo of sks ball in the snow", "a photo of sks ball",
                                       "a photo of zzx toy", "a photo of zzx toy"]
    assert not np.array_equal(inst["embedding"][0], inst["embedding"][1])  # the caption was encoded
    cls = read_all_examples(concept_records, m, "class")
    assert cls["concept"].tolist() == [0] * 6 + [1] * 3


def test_records_store_each_prompt_once_and_batches_join_it_back(concept_records, tokenizer):
    m = read_manifest(concept_records)
    prompts = ["a photo of sks ball", "a photo of sks ball in the snow", "a photo of zzx toy", "a photo of ball",
               "a photo of toy"]
    table = read_prompt_table(concept_records, m)
    assert sorted(table.prompts) == sorted(prompts) and m.num_prompts == 5  # 14 examples, 5 distinct prompts
    for name in m.instance_shards + m.class_shards:
        for record in tf.data.TFRecordDataset(str(concept_records / name)):
            stored = set(tf.train.Example.FromString(record.numpy()).features.feature)
            assert not stored & {features.EMBEDDING, features.TOKEN_IDS, features.PROMPT}, name
    # Batches carry each example's own prompt's token ids and that prompt's text-encoder output.
    encoder = build_models(model_config("tiny"), ("text_encoder",), seed=RANDOM_INIT_SEED).text_encoder
    expected = {tuple(tokenizer.tokenize(p)): encoder.predict_on_batch(tokenizer.tokenize(p)[None])[0] for p in prompts}
    seen = set()
    for batch in make_train_dataset(concept_records, m, per_replica_batch=5, seed=0).take(3):
        for kind in ("instance", "class"):
            for ids, embedding in zip(batch[f"{kind}_token_ids"].numpy(), batch[f"{kind}_embedding"].numpy()):
                seen.add(tuple(ids))
                # The same network on the same tokens, batched differently: equal up to float32 rounding.
                np.testing.assert_allclose(embedding, expected[tuple(ids)], atol=1e-5)
    assert len(seen) == 5  # captions included


def test_class_generation_is_resumable_and_draws_only_what_is_missing(two_concepts, concept_records, vocab_path):
    toy = two_concepts / "toy"
    before = {name: _pixels(toy / name) for name in _generated(toy)}
    victim = sorted(before)[1]
    (toy / victim).unlink()  # as if the run had been killed before drawing it
    stamps = {name: (toy / name).stat().st_mtime_ns for name in before if name != victim}
    run_command("make_tfrecords", model="tiny", concepts_file=two_concepts / "concepts.json",
                output_dir=two_concepts / "again", vocab_path=vocab_path, **CLASS_FLAGS)
    assert _generated(toy) == sorted(before)
    # Image i depends only on (prompt, seed, i): redrawn in another batch it differs at most by
    # float rounding (one level of a pixel), not as another image would.
    assert np.abs(_pixels(toy / victim) - before[victim]).max() <= 1
    assert {n: (toy / n).stat().st_mtime_ns for n in stamps} == stamps  # the others were not redrawn


def test_topping_up_after_a_settings_change_draws_new_images(two_concepts, concept_records, tmp_path, vocab_path):
    toy = tmp_path / "toy"
    shutil.copytree(two_concepts / "toy", toy)  # 3 images drawn with 2 steps
    before = _generated(toy)
    run_command("make_tfrecords", model="tiny", instance_dir=two_concepts / "zzx", instance_prompt="a photo of zzx toy",
                class_dir=toy, class_prompt="a photo of toy", num_class_images=4, output_dir=tmp_path / "rec",
                vocab_path=vocab_path, class_num_steps=3, class_batch_size=2)
    new = sorted(set(_generated(toy)) - set(before))
    assert len(new) == 1 and new[0].startswith("class-00000-")  # index 0 again, under a new name
    old = next(name for name in before if name.startswith("class-00000-"))
    # From the same starting noise, 3 steps instead of 2 give a near-copy (mean |difference| ~3
    # levels of 255); two images from different noise differ by ~70. 20 separates them.
    difference = np.abs(_pixels(toy / new[0]) - _pixels(toy / old)).mean()
    assert difference > 20, f"mean |difference| {difference:.1f}: a near-copy of {old}"


@pytest.mark.slow  # only in make test-all: a fresh 2-device process drawing class images
def test_class_images_do_not_depend_on_replicas_or_batch(two_concepts, tmp_path, vocab_path):
    """Two replicas of a mirrored strategy draw the same files as one device (batch 2 vs 4)."""
    import subprocess
    import sys

    shutil.copytree(two_concepts / "sks", tmp_path / "sks")
    flags = [f"--{k}={v}" for k, v in dict(
        model="tiny", instance_dir=tmp_path / "sks", instance_prompt="a photo of sks ball", class_dir=tmp_path / "toy",
        class_prompt="a photo of toy", num_class_images=3, output_dir=tmp_path / "rec", vocab_path=vocab_path,
        class_num_steps=2, class_batch_size=4, strategy="mirrored", num_cpu_devices=2).items()]
    result = subprocess.run([sys.executable, "-m", "dbdist.make_tfrecords", *flags], cwd=REPO, capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "strategy mirrored with 2 replica(s)" in result.stderr
    mirrored = {n: _pixels(tmp_path / "toy" / n) for n in _generated(tmp_path / "toy")}
    single = {n: _pixels(two_concepts / "toy" / n) for n in _generated(two_concepts / "toy")}
    assert mirrored.keys() == single.keys()
    for name in single:
        # Two devices run the same float32 kernels on different batch shapes: allow rounding to
        # move a pixel by one level; anything more means a different image.
        assert np.abs(mirrored[name] - single[name]).max() <= 1, name


def test_cached_latents_hold_the_posterior_of_the_crop_and_its_flip(sample_images, latents_dir, tmp_path):
    out = latents_dir  # make_tfrecords --cache_latents --random_flip of sample_images (tests/conftest.py)
    m = read_manifest(out)
    assert (m.record_format, m.latent_shape, m.flipped_latents) == ("latents", (8, 8, 4), True)
    got = read_all_examples(out, m, "instance")
    assert "image" not in got
    encoder = build_models(model_config("tiny"), ("vae_encoder",), seed=0).vae_encoder
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB")) for p in sorted(sample_images[0].iterdir())])
    pixels = pixels.astype(np.float32) / 127.5 - 1
    for batch, mean_key, logvar_key in ((pixels, features.LATENT_MEAN, features.LATENT_LOGVAR),
                                        (pixels[:, :, ::-1], features.LATENT_MEAN_FLIPPED, features.LATENT_LOGVAR_FLIPPED)):
        mean, logvar = encoder.predict_on_batch(batch)
        np.testing.assert_allclose(got[mean_key], mean, atol=1e-5)
        np.testing.assert_allclose(got[logvar_key], logvar, atol=1e-5)
    assert not np.allclose(got[features.LATENT_MEAN], got[features.LATENT_MEAN_FLIPPED])

    # Training from cached latents runs no VAE encoder (it is only loaded once, to check it made the latents).
    weights = tmp_path / "weights"
    _save_networks(build_models(model_config("tiny"), ("unet", "text_encoder", "vae_encoder"), seed=0), weights)
    run = tmp_path / "run"
    run_command("train", data_dir=out, output_dir=run, model="tiny", weights=weights, max_train_steps=2,
                global_batch_size=2, learning_rate=1e-3, random_flip=True, log_every=1)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2]
    assert all(np.isfinite(json.loads(line)["loss"]) for line in lines)


class _CapturingUnet:
    """Stands in for the UNet: keeps the latents it is given and predicts zeros."""

    def __call__(self, inputs, training):
        self.latents = np.asarray(inputs[0])
        return np.zeros_like(self.latents)


class _NoNoise:
    """A schedule that adds no diffusion noise, so the UNet sees the sampled latents as they are."""

    def add_noise(self, x0, noise, timesteps):
        return x0

    def training_target(self, x0, noise, timesteps):
        return x0


def test_cached_latents_draw_a_fresh_latent_every_step(latents_dir):
    # The records hold the posterior (mean, logvar), equal to the encoder's (test above). Two steps
    # that read the same cached records must each sample mean + std * eps with their own eps:
    # neither train on the mean nor reuse one draw.
    m = read_manifest(latents_dir)
    (batch,) = make_train_dataset(latents_dir, m, per_replica_batch=3, seed=0).take(1)
    means = np.concatenate([batch[features.INSTANCE_LATENT_MEAN], batch[features.CLASS_LATENT_MEAN]])
    logvars = np.concatenate([batch[features.INSTANCE_LATENT_LOGVAR], batch[features.CLASS_LATENT_LOGVAR]])
    settings = LossSettings(global_batch_size=3, prior_loss_weight=1.0, scaling_factor=0.18215, time_embedding_dim=32)
    sampled = []
    for step in (0, 1):
        unet = _CapturingUnet()
        noisy_batch = with_noise(batch, NoiseSpec(m.latent_shape), seed=0, step=step)  # as the pipeline draws it
        dreambooth_loss(unet, None, _NoNoise(), noisy_batch, settings)
        vae_noise = np.concatenate([noisy_batch[features.INSTANCE_VAE_NOISE], noisy_batch[features.CLASS_VAE_NOISE]])
        expected = (means + np.exp(0.5 * logvars) * vae_noise) * 0.18215
        # float32 arithmetic on values of order 1: equal to rounding.
        np.testing.assert_allclose(unet.latents, expected, atol=1e-5)
        sampled.append(unet.latents)
    # The tiny VAE's std is near 1, so draws lie ~0.18 apart at SD's scale, far above rounding.
    for latents in sampled:
        assert np.all(np.abs(latents - means * 0.18215).max(axis=(1, 2, 3)) > 0.05)  # not the mean
    assert np.all(np.abs(sampled[0] - sampled[1]).max(axis=(1, 2, 3)) > 0.05)  # a fresh draw each step


def test_every_image_mode_makes_valid_records(tmp_path, vocab_path):
    """Grayscale, RGBA (on white), CMYK, 16-bit PNG and a wide image all become records."""
    folder = tmp_path / "modes"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 70), dtype=np.uint8), "L").save(folder / "gray.png")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[..., 0] = 255
    Image.fromarray(rgba, "RGBA").save(folder / "transparent.png")  # fully transparent: white
    Image.new("CMYK", (80, 64), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray((rng.integers(0, 65536, (64, 64))).astype(np.uint16)).save(folder / "deep.png")
    Image.new("RGB", (200, 64), (0, 0, 255)).save(folder / "wide.png")
    out = tmp_path / "rec"
    run_command("make_tfrecords", model="tiny", instance_dir=folder, instance_prompt="a photo", output_dir=out,
                vocab_path=vocab_path)
    got = read_all_examples(out, read_manifest(out), "instance")
    by_name = dict(zip(got["source"], got["image"]))
    assert by_name["transparent.png"].min() == 255
    assert by_name["cmyk.jpg"].shape == (64, 80, 3) and by_name["cmyk.jpg"][..., 0].mean() > 200  # red
    assert by_name["gray.png"].shape == (64, 64, 3)
    assert by_name["deep.png"].std() > 20  # scaled from 16 bits, not clipped to white
    assert by_name["wide.png"].shape == (64, 128, 3)  # shorter side 64, aspect capped at 2 for random crops


# --- bad input ----------------------------------------------------------------------------

def test_min_size_rejects_small_images_by_name(sample_images, tmp_path, vocab_path):
    folder = tmp_path / "small"
    shutil.copytree(sample_images[0], folder)
    Image.new("RGB", (40, 90)).save(folder / "tiny.png")
    with pytest.raises(ValueError, match=r"tiny\.png: 40x90 image is smaller than --min_size=64 px"):
        run_command("make_tfrecords", model="tiny", instance_dir=folder, instance_prompt="a photo",
                    output_dir=tmp_path / "out", vocab_path=vocab_path, min_size=64)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").glob("*.tfrecord"))


@pytest.mark.parametrize("concepts, message", [
    ([{"instance_dir": "a", "class_dir": "", "class_prompt": ""}], r"concept 0 is missing instance_prompt"),
    ([{"instance_dir": "a", "instance_prompt": "p", "class_dir": "c"}], r"concept 0 is missing class_prompt"),
    ([{"instance_dir": "a", "instance_prompt": "p", "class_dir": "c", "class_prompt": "x", "colour": 1}],
     r"unknown fields colour"),
    ([{"instance_dir": "a", "instance_prompt": "p", "class_dir": "dogs", "class_prompt": "a dog"},
      {"instance_dir": "b", "instance_prompt": "q", "class_dir": "dogs/", "class_prompt": "a cat"}],
     r"concepts 0 and 1 share class_dir \S*dogs/? with different class prompts \('a dog' vs 'a cat'\)"),
    ([{"instance_dir": "a", "instance_prompt": "p", "class_dir": "c", "class_prompt": "x"},
      {"instance_dir": "b", "instance_prompt": "q", "class_dir": "", "class_prompt": ""}],
     r"concepts \[1\] have no class_dir but others do"),
    ({"instance_dir": "a"}, r"expected a JSON list of concept objects, got dict"),
])
def test_bad_concepts_file_is_named(tmp_path, vocab_path, concepts, message):
    path = tmp_path / "concepts.json"
    path.write_text(json.dumps(concepts))
    with pytest.raises(ValueError, match=rf"{path}: .*{message}"):
        run_command("make_tfrecords", model="tiny", concepts_file=path, output_dir=tmp_path / "out", vocab_path=vocab_path)


def test_concepts_file_and_single_concept_flags_conflict(tmp_path, sample_images, vocab_path):
    (tmp_path / "c.json").write_text("[]")
    with pytest.raises(app.UsageError, match="--concepts_file replaces --instance_dir"):
        run_command("make_tfrecords", model="tiny", concepts_file=tmp_path / "c.json", instance_dir=sample_images[0],
                    output_dir=tmp_path / "out", vocab_path=vocab_path)


def test_class_batch_must_divide_over_replicas(tmp_path, sample_images, vocab_path):
    import subprocess
    import sys

    flags = [f"--{k}={v}" for k, v in dict(
        model="tiny", instance_dir=sample_images[0], instance_prompt="a photo", class_dir=tmp_path / "cls",
        class_prompt="a photo of x", num_class_images=2, class_batch_size=3, strategy="mirrored",
        num_cpu_devices=2, output_dir=tmp_path / "out", vocab_path=vocab_path).items()]
    result = subprocess.run([sys.executable, "-m", "dbdist.make_tfrecords", *flags], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode != 0
    assert "--class_batch_size 3 is not divisible by the 2 replicas; use a multiple of 2" in result.stderr
    assert not (tmp_path / "cls").exists() and not (tmp_path / "out").exists()


def test_train_refuses_a_corrupted_shard_by_name(records_dir, tmp_path):
    data = tmp_path / "records"
    shutil.copytree(records_dir, data)
    m = read_manifest(data)
    victim = data / m.class_shards[-1]
    victim.write_bytes(victim.read_bytes()[:-9])  # truncated, as by an interrupted copy
    with pytest.raises(CorruptShardError, match=rf"{victim}: corrupted, truncated"):
        run_command("train", data_dir=data, output_dir=tmp_path / "run", model="tiny", max_train_steps=1)
    assert not (tmp_path / "run" / "export").exists()


# --- which networks made the records (defect 6) ----------------------------------------------

@pytest.fixture(scope="module")
def other_weights(tmp_path_factory):
    """A --weights folder of tiny networks other than tiny's default ones (drawn from seed 42)."""
    folder = tmp_path_factory.mktemp("other_weights")
    _save_networks(build_models(model_config("tiny"), seed=42), folder)
    return folder


def test_records_train_and_generate_with_other_seeds_share_one_text_encoder(
        sample_images, vocab_path, tmp_path, monkeypatch):
    # --seed orders data and draws noise; it must not pick tiny's networks, or the text encoder that
    # samples (generate) is not the one that made the embeddings the UNet was trained on.
    records = tmp_path / "records"
    run_command("make_tfrecords", model="tiny", instance_dir=sample_images[0], instance_prompt="a photo of sks ball",
                output_dir=records, vocab_path=vocab_path, seed=1)
    stored = read_all_examples(records, read_manifest(records), "instance")["embedding"][0]
    run_command("train", data_dir=records, output_dir=tmp_path / "run", model="tiny", max_train_steps=1, seed=2)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["data"]["encoder_fingerprints"] == read_manifest(records).fingerprints
    used = {}

    def spy(model, networks, tokenizer, **kwargs):
        used["text_encoder"], used["tokenizer"] = networks.text_encoder, tokenizer
        return Sampler(model, networks, tokenizer, **kwargs)

    monkeypatch.setattr(generate, "Sampler", spy)
    run_command("generate", run_dir=tmp_path / "run", prompt="a photo of sks ball", num_images=1, num_steps=1,
                seed=3, output_dir=tmp_path / "samples", vocab_path=vocab_path)
    tokens = used["tokenizer"].tokenize("a photo of sks ball")[None]
    # The same network on the same tokens: equal up to float32 rounding of a batch of one.
    np.testing.assert_allclose(used["text_encoder"].predict_on_batch(tokens)[0], stored, atol=1e-6)


def test_train_refuses_records_made_with_other_weights(sample_images, vocab_path, tmp_path, other_weights):
    records = tmp_path / "records"
    run_command("make_tfrecords", model="tiny", instance_dir=sample_images[0], instance_prompt="a photo of sks ball",
                output_dir=records, vocab_path=vocab_path, weights=other_weights)
    m = read_manifest(records)
    assert m.weights == str(other_weights) and set(m.fingerprints) == {"text_encoder"}
    with pytest.raises(ValueError, match=rf"{records} was encoded by a text_encoder with weights sha256:\w+\.\.\. "
                                         rf"\(--weights={other_weights}\), but this run's text_encoder is "
                                         r"sha256:\w+\.\.\. \(the preset's default weights\)"):
        run_command("train", data_dir=records, output_dir=tmp_path / "run", model="tiny", max_train_steps=1)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_train_refuses_cached_latents_of_another_vae(latents_dir, tmp_path, other_weights):
    # Same text encoder (tiny's default), another VAE: the cached latents belong to another latent space.
    weights = tmp_path / "weights"
    _save_networks(build_models(model_config("tiny"), ("unet", "text_encoder"), seed=0), weights)
    shutil.copy(other_weights / "vae_encoder.h5", weights / "vae_encoder.h5")
    with pytest.raises(ValueError, match=r"encoded by a vae_encoder with weights sha256:\w+\.\.\. \(the preset's "
                                         rf"default weights\), but this run's vae_encoder is sha256:\w+\.\.\. "
                                         rf"\(--weights={weights}\)"):
        run_command("train", data_dir=latents_dir, output_dir=tmp_path / "run", model="tiny", weights=weights,
                    max_train_steps=1)


def test_generate_refuses_a_text_encoder_other_than_the_records(records_dir, vocab_path, tmp_path, other_weights):
    run_command("train", data_dir=records_dir, output_dir=tmp_path / "run", model="tiny", max_train_steps=1)
    with pytest.raises(ValueError, match=rf"records of --run_dir {tmp_path / 'run'} was encoded by a text_encoder "
                                         rf".*but this run's text_encoder is .*\(--weights={other_weights}\)"):
        run_command("generate", run_dir=tmp_path / "run", weights=other_weights, prompt="a photo of sks ball",
                    num_images=1, num_steps=1, output_dir=tmp_path / "samples", vocab_path=vocab_path)


def test_records_pad_prompts_as_the_presets_tokenizer_and_train_checks_it(sample_images, vocab_path, tmp_path,
                                                                          monkeypatch):
    # make_tfrecords pads token ids (and encodes the embeddings) with the preset's pad id and records
    # it; train refuses records padded otherwise than its preset pads. The tiny preset stands in for
    # sd-v2 (OpenCLIP pads with 0) by padding with 0 while the records are made.
    from dbdist import config

    records = tmp_path / "records"
    tiny = config.MODEL_PRESETS["tiny"]
    monkeypatch.setitem(config.MODEL_PRESETS, "tiny", lambda: dataclasses.replace(
        tiny(), text_encoder=dataclasses.replace(tiny().text_encoder, pad_token_id=0)))
    run_command("make_tfrecords", model="tiny", instance_dir=sample_images[0], instance_prompt="a photo of sks ball",
                output_dir=records, vocab_path=vocab_path)
    m = read_manifest(records)
    assert m.pad_token_id == 0
    ids = read_prompt_table(records, m).token_ids[0].tolist()
    assert ids[:7] == [49406, 320, 1125, 539, 48136, 1069, 49407] and set(ids[7:]) == {0}
    monkeypatch.setitem(config.MODEL_PRESETS, "tiny", tiny)  # back to the end-token padding
    with pytest.raises(ValueError, match=rf"data_dir {records} holds prompts padded with token id 0 and their "
                                         r"embeddings; the 'tiny' text encoder's tokenizer pads with 49407"):
        run_command("train", data_dir=records, output_dir=tmp_path / "run", model="tiny", max_train_steps=1)

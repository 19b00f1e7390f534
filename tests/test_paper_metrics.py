"""The DreamBooth paper's DINO / CLIP-I / CLIP-T (dbdist/metrics/): the maths on hand-made embeddings,
and `dbdist.evaluate --judge=paper` end to end with tiny random keras-hub backbones (no download)."""

import json
import math

import keras_hub
import numpy as np
import pytest
from commands import run_command

from dbdist.config import model_config
from dbdist.errors import UserError
from dbdist.metrics import paper_eval, subject_scores
from dbdist.models import build_models
from dbdist.text.tokenizer import byte_alphabet, read_merges
from dbdist.weights.keras_cv_h5 import save_keras_cv_h5

# Sums of a few float64 products: exact up to rounding.
TOLERANCE = 1e-12


def test_cosine_scores_match_hand_computed_values():
    e = np.array([[1.0, 0.0], [0.0, 2.0]])
    assert subject_scores.mean_pairwise_cosine(e[:1], 3 * e[:1]) == pytest.approx(1.0, abs=TOLERANCE)  # identical direction
    assert subject_scores.mean_pairwise_cosine(e[:1], e[1:]) == pytest.approx(0.0, abs=TOLERANCE)  # orthogonal
    # By hand: cos([1,0],[1,1]) = 1/sqrt2, cos([1,0],[-1,0]) = -1, cos([0,2],[1,1]) = 1/sqrt2, cos([0,2],[-1,0]) = 0.
    real = np.array([[1.0, 1.0], [-1.0, 0.0]])
    assert subject_scores.mean_pairwise_cosine(e, real) == pytest.approx((2 / math.sqrt(2) - 1) / 4, abs=TOLERANCE)
    # Paired, row by row: cos([1,0],[1,1]) = 1/sqrt2 and cos([0,2],[-1,0]) = 0.
    assert subject_scores.mean_paired_cosine(e, real) == pytest.approx(1 / (2 * math.sqrt(2)), abs=TOLERANCE)
    # score() pools every image of every prompt: 2 images on "subject", 1 on "recontext/snow".
    generated = {"subject": {"dino": e, "clip_image": e, "clip_text": np.array([1.0, 0.0])},
                 "recontext/snow": {"dino": e[1:], "clip_image": e[1:], "clip_text": np.array([1.0, 0.0])}}
    result = subject_scores.score(generated, {"dino": e[:1], "clip_image": real})
    assert result["dino/subject"] == pytest.approx(0.5, abs=TOLERANCE) and result["dino/recontext/snow"] == 0.0
    assert result["dino"] == pytest.approx(1 / 3, abs=TOLERANCE)
    assert result["clip_t/subject"] == pytest.approx(0.5, abs=TOLERANCE)
    assert result["clip_t"] == pytest.approx(1 / 3, abs=TOLERANCE)  # cosines 1, 0 and 0
    with pytest.raises(ValueError, match=r"all-zero embedding \(rows \[1\]\)"):
        subject_scores.mean_pairwise_cosine(e, np.array([[1.0, 0.0], [0.0, 0.0]]))


def test_clip_t_reads_the_prompt_without_the_identifier():
    identifier = paper_eval.identifier_words("a photo of sks ball", "a photo of ball")
    assert identifier == {"sks"}
    assert paper_eval.clip_t_prompt("a photo of sks ball on the beach", identifier) == "a photo of ball on the beach"
    assert paper_eval.identifier_words("a photo of sks ball", "") == set()  # no class prompt: the prompt whole


def _tiny_presets(root, vocab_path):
    """keras-hub preset directories of a 1-layer DINOv2 and a 1-layer CLIP, randomly initialised, 28 px."""
    dino_dir, clip_dir = str(root / "dino"), str(root / "clip")
    tiny = dict(num_layers=1, hidden_dim=16, num_heads=2, intermediate_dim=32)
    keras_hub.models.DINOV2Backbone(patch_size=14, image_shape=(28, 28, 3), position_embedding_shape=(28, 28, 3),
                                    **tiny).save_to_preset(dino_dir)
    keras_hub.layers.DINOV2ImageConverter(image_size=(28, 28), scale=1 / 255).save_to_preset(dino_dir)
    vision = keras_hub.models.CLIPVisionEncoder(patch_size=14, image_shape=(28, 28, 3), **tiny)
    text = keras_hub.models.CLIPTextEncoder(vocabulary_size=49408, embedding_dim=16, max_sequence_length=77, **tiny)
    keras_hub.models.CLIPBackbone(vision, text, projection_dim=8).save_to_preset(clip_dir)
    # CLIP's own BPE (the vocabulary our tokenizer reads), in keras-hub's form: ids as CLIP builds them.
    merges = read_merges(vocab_path)
    alphabet = list(byte_alphabet().values())
    pieces = alphabet + [c + "</w>" for c in alphabet] + ["".join(p) for p in merges] + ["<|startoftext|>", "<|endoftext|>"]
    tokenizer = keras_hub.models.CLIPTokenizer(vocabulary={p: i for i, p in enumerate(pieces)},
                                               merges=[" ".join(p) for p in merges])
    converter = keras_hub.layers.CLIPImageConverter(image_size=(28, 28), scale=1 / 255)
    keras_hub.models.CLIPPreprocessor(tokenizer, image_converter=converter).save_to_preset(clip_dir)
    return dino_dir, clip_dir


def _finished_run(run_dir, data_dir):
    """A tiny run's config.json and export/ as dbdist.train leaves them (the caller writes export/unet.h5)."""
    (run_dir / "export").mkdir(parents=True)
    config = {"model": {"preset": "tiny"}, "runtime": {"weights": ""}, "data": {"data_dir": str(data_dir)}}
    (run_dir / "config.json").write_text(json.dumps(config))
    return run_dir


def test_evaluate_reports_dino_clip_i_clip_t_with_tiny_backbones(records_dir, tmp_path, vocab_path):
    run_dir = _finished_run(tmp_path / "run", records_dir)
    save_keras_cv_h5(build_models(model_config("tiny"), ("unet",)).unet, str(run_dir / "export" / "unet.h5"))
    dino_dir, clip_dir = _tiny_presets(tmp_path, vocab_path)
    run_command("evaluate", run_dir=run_dir, output_dir=tmp_path / "eval", num_images=2, num_steps=2,
                dino_preset=dino_dir, clip_preset=clip_dir, vocab_path=vocab_path)
    report = json.loads((tmp_path / "eval" / "evaluation.json").read_text())
    assert report["judge"] == "paper" and report["num_real_images"] == 3  # auto picks the paper's scores on tiny
    assert report["clip_t_prompts"]["recontext/beach"] == "a photo of ball on the beach"
    metrics = report["metrics"]
    for name in ("dino", "clip_i", "clip_t"):
        assert math.isfinite(metrics[name]) and -1 <= metrics[name] <= 1, (name, metrics[name])
    assert set(metrics) >= {f"dino/{key}" for key in paper_eval.prompts("a photo of sks ball")}


def test_evaluate_on_latent_records_asks_for_the_instance_photos(latents_dir, tmp_path, vocab_path):
    # The check comes before any network is loaded, so the export can be an empty file.
    run_dir = _finished_run(tmp_path / "run", latents_dir)
    (run_dir / "export" / "unet.h5").write_bytes(b"")
    with pytest.raises(UserError, match=r"hold cached VAE latents \('latents'\), not the instance photos .* "
                                        r"expected --instance_dir \(the records were made from '.*sks'\)"):
        run_command("evaluate", run_dir=run_dir, output_dir=tmp_path / "eval", vocab_path=vocab_path)

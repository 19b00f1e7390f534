"""dbdist.evaluate's scores (dbdist/toy/scores.py) on hand-made verdicts, and its refusals."""

import json

import pytest
from commands import run_command

from dbdist.config import model_config
from dbdist.errors import MissingInputError, UserError
from dbdist.models import build_models
from dbdist.toy import scores
from dbdist.toy.judge import Verdict
from dbdist.weights.keras_cv_h5 import save_keras_cv_h5
from dbdist.weights.pretrained import load_networks

SUBJECT = Verdict("ball", "white", "striped", "grey", accent="red")
PLAIN_BALL = Verdict("ball", "green", "plain", "sky")


def test_scores_count_what_the_judge_saw():
    wanted = scores.prompts("a photo of a sks ball", "a photo of a ball")
    assert wanted["recontext/sky"] == "a photo of a sks ball on a sky background"
    verdicts = {key: [PLAIN_BALL] for key in wanted}
    verdicts["subject"] = [SUBJECT, SUBJECT, SUBJECT, PLAIN_BALL]
    verdicts["recontext/sky"] = [Verdict("ball", "red", "striped", "sky", accent="white"), SUBJECT]  # 1 of 2 on sky
    verdicts["class"] = [PLAIN_BALL, PLAIN_BALL, SUBJECT, Verdict("box", "red", "plain", "grey")]
    verdicts["base/green/sand"] = [Verdict("ball", "green", "dotted", "sand")]
    result = scores.score(verdicts, "a photo of a ball")
    assert result["subject_fidelity"] == 0.75
    assert result["recontextualisation/sky"] == 0.5 and result["recontextualisation/grey"] == 0.0
    assert result["recontextualisation"] == 0.5 / 4
    assert result["prior_preservation"] == 0.5 and result["class_is_subject"] == 0.25
    assert result["prompt_fidelity"] == 1 / 5  # only green-on-sand was drawn as asked


def test_a_class_prompt_outside_the_world_is_refused():
    with pytest.raises(UserError, match="'a photo of a dog' must name exactly one of the toy world's objects"):
        scores.prompts("a photo of sks dog", "a photo of a dog")


def _fake_run(run_dir, preset, exported):
    (run_dir / "export").mkdir(parents=True)
    config = {"model": {"preset": preset, "resolution": 64}, "runtime": {"weights": ""}, "data": {"data_dir": ""}}
    (run_dir / "config.json").write_text(json.dumps(config))
    if exported:
        (run_dir / "export" / "unet.h5").write_bytes(b"")


def test_evaluate_refuses_a_run_without_export(tmp_path, vocab_path):
    _fake_run(tmp_path / "run", "toy", exported=False)
    with pytest.raises(MissingInputError, match="has no export .*unet.h5 is missing"):
        run_command("evaluate", run_dir=tmp_path / "run", output_dir=tmp_path / "eval", vocab_path=vocab_path)


def test_evaluate_refuses_the_toy_judge_on_another_preset(tmp_path, vocab_path):
    _fake_run(tmp_path / "run", "tiny", exported=True)
    with pytest.raises(UserError, match="--judge=toy .* trained as 'tiny'; expected a --model=toy run"):
        run_command("evaluate", run_dir=tmp_path / "run", judge="toy", output_dir=tmp_path / "eval",
                    vocab_path=vocab_path)


def test_toy_refuses_another_presets_weights_naming_what_it_expected(tmp_path):
    tiny = build_models(model_config("tiny"), ("text_encoder",))
    save_keras_cv_h5(tiny.text_encoder, str(tmp_path / "text_encoder.h5"))
    with pytest.raises(UserError, match="--model=toy expects toy's text_encoder weights .* expects shape "
                                        r"\(49408, 64\), the file has \(49408, 32\)"):
        load_networks(model_config("toy"), ("text_encoder",), weights_dir=str(tmp_path))

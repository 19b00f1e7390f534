"""--noise_offset and --snr_gamma as settings: validated, recorded in config.json, fixed across a resume.

Their maths is tested in test_engine_free_loss.py (min-SNR) and test_reader_features.py (offset noise).
"""

import dataclasses
import json

import pytest

from dbdist.config import DataConfig, OptimConfig, RunConfig, RuntimeConfig, TrainConfig, model_config
from dbdist.errors import UserError
from dbdist.training.checkpointing import check_resume_compatible


def _config(**train):
    return RunConfig(model_config("tiny"), DataConfig(), OptimConfig(), TrainConfig(**train), RuntimeConfig())


@pytest.mark.parametrize("train, message", [
    (dict(noise_offset=-0.1), "noise_offset must be a finite number >= 0, got -0.1"),
    (dict(noise_offset=float("nan")), "noise_offset must be a finite number >= 0, got nan"),
    (dict(snr_gamma=0.0), "snr_gamma must be a finite number > 0 when given, got 0.0"),
])
def test_bad_values_are_refused_by_name(train, message):
    with pytest.raises(UserError, match=message):
        _config(**train).validate()


def test_recorded_in_config_json_and_fixed_across_a_resume(tmp_path):
    config = _config(noise_offset=0.05, snr_gamma=5.0).validate()
    recorded = json.loads(config.to_json())
    assert (recorded["train"]["noise_offset"], recorded["train"]["snr_gamma"]) == (0.05, 5.0)
    saved = tmp_path / "config.json"
    saved.write_text(config.to_json())
    check_resume_compatible(str(saved), recorded)
    other = json.loads(dataclasses.replace(config, train=dataclasses.replace(config.train, snr_gamma=None)).to_json())
    with pytest.raises(UserError, match="train.snr_gamma: 5.0 in the checkpoint, None now"):
        check_resume_compatible(str(saved), other)
    # A run recorded before these settings existed ran without them: it resumes with the
    # defaults and refuses anything else.
    older = json.loads(_config().to_json())
    for key in ("noise_offset", "snr_gamma"):
        del older["train"][key]
    saved.write_text(json.dumps(older))
    check_resume_compatible(str(saved), json.loads(_config().to_json()))
    with pytest.raises(UserError, match="train.noise_offset: 0.0 in the checkpoint, 0.05 now"):
        check_resume_compatible(str(saved), recorded)

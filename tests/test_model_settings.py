"""Each preset's model settings as its model was trained: resolution, prediction type, prompt padding."""

import numpy as np
import pytest
from keras import ops

from dbdist.config import ScheduleConfig, model_config
from dbdist.diffusion import NoiseSchedule
from dbdist.diffusion.ddim import ddim_sample


def test_presets_match_the_models_keras_cv_publishes():
    # keras-cv's SD 2.1 file is 2.1-base: sampled with an epsilon DDIM at 512 px by default
    # (dbdist/config.py _sd_v2 cites the sources). Padding: OpenCLIP pads with 0, CLIP with 49407.
    v1, v2 = model_config("sd-v1"), model_config("sd-v2")
    assert (v1.resolution, v1.schedule.prediction_type, v1.text_encoder.pad_token_id) == (512, "epsilon", 49407)
    assert (v2.resolution, v2.schedule.prediction_type, v2.text_encoder.pad_token_id) == (512, "epsilon", 0)
    assert model_config("tiny").text_encoder.pad_token_id == 49407


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddim_reads_what_the_training_target_taught(prediction_type):
    # A UNet that outputs exactly its training target (noise, or v) must lead DDIM back to x_0:
    # one step from t=999 to a_prev=1 returns pred_x0. Reading the output as the other type would not.
    schedule = NoiseSchedule(ScheduleConfig(prediction_type=prediction_type))
    rng = np.random.default_rng(0)
    x0, eps = (rng.normal(size=(1, 2, 2, 4)).astype(np.float32) for _ in range(2))
    t = np.array([999])
    x_t = ops.convert_to_numpy(schedule.add_noise(x0, eps, t))
    target = ops.convert_to_numpy(schedule.training_target(x0, eps, t))
    predict = lambda latents, t_emb, context: np.concatenate([target, target])  # noqa: E731
    context = np.zeros((1, 1, 8), np.float32)
    got = ops.convert_to_numpy(ddim_sample(predict, x_t, context, context, schedule, num_steps=1, time_embedding_dim=8))
    # At t=999 sqrt(alpha_bar) is 0.068: recovering x_0 divides by it in the epsilon case, so
    # float32 rounding of order 1e-7 grows to ~1e-5.
    np.testing.assert_allclose(got, x0, atol=1e-4)


def test_the_sampler_pads_prompts_as_the_presets_tokenizer(tokenizer):
    from dbdist.sampling import Sampler

    class Networks:
        unet = vae_decoder = None

        @staticmethod
        def text_encoder(tokens, training):
            return np.asarray(tokens, np.float32)[..., None]  # shows the token ids it was given

    for preset, pad in (("sd-v1", 49407), ("sd-v2", 0)):
        encoded = Sampler(model_config(preset), Networks, tokenizer).encode(["dog"])
        assert encoded[0, :4, 0].tolist() == [49406, 1929, 49407, pad]


def test_runs_recorded_before_pad_ids_resume_only_where_the_padding_is_unchanged(tmp_path):
    import json

    from dbdist.config import DataConfig, OptimConfig, RunConfig, RuntimeConfig, TrainConfig
    from dbdist.errors import UserError
    from dbdist.training.checkpointing import check_resume_compatible

    def recorded(preset, resolution):
        config = RunConfig(model_config(preset), DataConfig(), OptimConfig(), TrainConfig(), RuntimeConfig())
        fields = json.loads(config.to_json())
        fields["model"]["resolution"] = resolution
        return fields

    saved = tmp_path / "config.json"
    for preset, resolution in (("sd-v1", 512), ("sd-v2", 768)):
        older = recorded(preset, resolution)
        del older["model"]["text_encoder"]["pad_token_id"]  # as written before pad ids were recorded
        saved.write_text(json.dumps(older))
        if preset == "sd-v1":
            check_resume_compatible(str(saved), recorded(preset, resolution))
        else:
            with pytest.raises(UserError, match=r"model.text_encoder.pad_token_id: 49407 in the checkpoint, 0 now"):
                check_resume_compatible(str(saved), recorded(preset, resolution))
    with pytest.raises(UserError, match=r"model.resolution: 768 in the checkpoint, 512 now"):
        check_resume_compatible(str(saved), recorded("sd-v2", 512))

"""Each preset's model settings as its model was trained: resolution, prediction type, prompt padding."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy
from keras import ops

from dbdist.config import DataConfig, OptimConfig, RunConfig, RuntimeConfig, ScheduleConfig, TrainConfig, model_config
from dbdist.errors import UserError
from dbdist.formats.source_settings import SourceSettings, read_source_settings
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


FIXTURES = Path(__file__).parent / "fixtures" / "diffusers"
_SD2_KEY = "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight"


def _selected_model(**flag_values):
    """common_flags.selected_model_config() under `flag_values`, as every command calls it."""
    from absl import flags

    from dbdist import common_flags

    flags.FLAGS.unparse_flags()
    flags.FLAGS(["dbdist"] + [f"--{key}={value}" for key, value in flag_values.items()])
    try:
        return common_flags.selected_model_config()
    finally:
        flags.FLAGS.unparse_flags()


def _diffusers_folder(tmp_path, scheduler):
    folder = tmp_path / "sd2"
    shutil.copytree(FIXTURES / "sd2", folder)
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    return folder


def test_a_diffusers_folder_gives_its_prediction_type_and_resolution_unless_flags_say(tmp_path):
    folder = _diffusers_folder(tmp_path, {"_class_name": "DDIMScheduler", "prediction_type": "v_prediction"})
    model = _selected_model(model="sd-v2", weights=folder)
    # The fixture UNet's sample_size is 16 latent pixels: x 8 (the VAE's downsampling) = 128 px.
    assert (model.schedule.prediction_type, model.resolution) == ("v_prediction", 128)
    run = RunConfig(model, DataConfig(), OptimConfig(), TrainConfig(), RuntimeConfig())
    assert json.loads(run.to_json())["model"]["schedule"]["prediction_type"] == "v_prediction"  # into config.json
    model = _selected_model(model="sd-v2", weights=folder, prediction_type="epsilon", resolution=64)
    assert (model.schedule.prediction_type, model.resolution) == ("epsilon", 64)
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps({"prediction_type": "sample"}))
    with pytest.raises(UserError, match=r"scheduler_config.json: prediction_type 'sample' is not supported"):
        _selected_model(model="sd-v2", weights=folder)


def test_a_single_file_is_read_as_diffusers_reads_it(tmp_path):
    # diffusers' single_file_utils: SD 2.x (cross-attention keys 1024 wide) is the 768 px v model,
    # except a global_step of 875000 (512-base, epsilon); SD 1.x is epsilon. Only the 768 px model states a
    # resolution (the others leave the preset's: a tiny model in an SD 1.x-kind file is not 512 px).
    def settings(tensors):
        path = tmp_path / "model.safetensors"
        safetensors.numpy.save_file(tensors, str(path))
        return read_source_settings(path, downsample_factor=8)

    key = np.zeros((8, 1024), np.float16)
    assert settings({_SD2_KEY: key}) == SourceSettings("v_prediction", 768)
    assert settings({_SD2_KEY: key, "global_step": np.array(875000, np.int64)}) == SourceSettings("epsilon", None)
    assert settings({_SD2_KEY: np.zeros((8, 768), np.float16)}) == SourceSettings("epsilon", None)
    assert read_source_settings("", 8) == SourceSettings()  # keras-cv's files: the preset's settings


def test_generate_samples_a_run_with_its_recorded_prediction_type(tmp_path):
    from absl import flags

    from dbdist import generate

    tiny = model_config("tiny")
    model = dataclasses.replace(tiny, schedule=dataclasses.replace(tiny.schedule, prediction_type="v_prediction"))
    run = RunConfig(model, DataConfig(), OptimConfig(), TrainConfig(lora_rank=2, lora_alpha=2.0), RuntimeConfig())
    (tmp_path / "config.json").write_text(run.to_json())
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["generate", f"--run_dir={tmp_path}"])
    try:
        assert generate._model_and_weights()[0].schedule.prediction_type == "v_prediction"
    finally:
        flags.FLAGS.unparse_flags()

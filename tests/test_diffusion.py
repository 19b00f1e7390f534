"""Diffusion maths against keras-cv's (the reference SD sampler) and against hand computation."""

import numpy as np
import pytest
from keras import ops

from dbdist.config import ScheduleConfig, model_config
from dbdist.diffusion import NoiseSchedule, sample_latents, timestep_embedding
from dbdist.diffusion.ddim import ddim_sample, initial_noise, pixels_to_uint8, sampling_timesteps
from dbdist.models import build_models


def test_schedule_is_sd_scaled_linear():
    # keras-cv's sampler hard-codes SD's alphas_cumprod; ours is computed from the betas.
    from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD

    ours = NoiseSchedule().alphas_cumprod
    assert ours.shape == (1000,)
    # Tolerance 1e-6: keras-cv's table is printed to ~8 significant digits.
    np.testing.assert_allclose(ours, np.array(_ALPHAS_CUMPROD, dtype=np.float64), atol=1e-6, rtol=0)
    assert ours[0] == pytest.approx(1 - 0.00085, rel=1e-7)  # first beta
    assert 1 - ours[-1] / ours[-2] == pytest.approx(0.012, rel=1e-3)  # last beta


def test_linear_schedule_and_bad_names():
    linear = NoiseSchedule(ScheduleConfig(beta_schedule="linear", beta_start=1e-4, beta_end=0.02))
    assert linear.alphas_cumprod[0] == pytest.approx(1 - 1e-4)
    with pytest.raises(ValueError, match="beta_schedule"):
        NoiseSchedule(ScheduleConfig(beta_schedule="cosine"))
    with pytest.raises(ValueError, match="prediction_type"):
        NoiseSchedule(ScheduleConfig(prediction_type="sample"))


def test_add_noise_and_targets_by_hand():
    schedule = NoiseSchedule()
    x0 = np.full((2, 2, 2, 4), 0.5, np.float32)
    noise = np.full((2, 2, 2, 4), -1.0, np.float32)
    t = np.array([0, 999])
    noisy = ops.convert_to_numpy(schedule.add_noise(x0, noise, t))
    for i, step in enumerate(t):
        a = schedule.alphas_cumprod[step]
        np.testing.assert_allclose(noisy[i], np.sqrt(a) * 0.5 - np.sqrt(1 - a), rtol=1e-6)
    np.testing.assert_array_equal(ops.convert_to_numpy(schedule.training_target(x0, noise, t)), noise)
    v = NoiseSchedule(ScheduleConfig(prediction_type="v_prediction"))
    target = ops.convert_to_numpy(v.training_target(x0, noise, t))
    a = v.alphas_cumprod[999]
    np.testing.assert_allclose(target[1], np.sqrt(a) * -1.0 - np.sqrt(1 - a) * 0.5, rtol=1e-5)


def test_timestep_embedding_matches_keras_cv():
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusionBase

    for t in (0, 1, 500, 999):
        expected = ops.convert_to_numpy(StableDiffusionBase._get_timestep_embedding(None, t, 3))
        got = ops.convert_to_numpy(timestep_embedding(np.full((3,), t), 320))
        np.testing.assert_allclose(got, expected, atol=1e-6)  # same fp32 ops, up to exp/cos rounding


def test_sample_latents_clips_log_variance_and_scales():
    mean = np.zeros((1, 1, 1, 2), np.float32)
    log_variance = np.array([[[[100.0, 0.0]]]], np.float32)  # 100 would overflow exp()
    noise = np.ones((1, 1, 1, 2), np.float32)
    z = ops.convert_to_numpy(sample_latents(mean, log_variance, noise, 0.18215))
    np.testing.assert_allclose(z[0, 0, 0], [np.exp(10.0) * 0.18215, 0.18215], rtol=1e-6)


def test_sampling_timesteps_match_keras_cv_spacing():
    steps = sampling_timesteps(50)
    expected = (np.arange(0, 50) * (999 / 49)).round().astype(np.int64)[::-1]
    np.testing.assert_array_equal(steps, expected)
    assert steps[0] == 999 and steps[-1] == 0
    assert list(sampling_timesteps(1)) == [999]
    with pytest.raises(ValueError, match="num_steps"):
        sampling_timesteps(0)
    assert len(set(sampling_timesteps(1000))) == 1000  # every training timestep once
    with pytest.raises(ValueError, match=r"num_steps must be in \[1, 1000\], got 1001"):
        sampling_timesteps(1001)  # would repeat timesteps


def test_initial_noise_is_per_image():
    both = initial_noise(7, 2, 8)
    second = initial_noise(7, 1, 8, first_index=1)
    np.testing.assert_array_equal(both[1], second[0])
    assert not np.allclose(both[0], both[1])
    np.testing.assert_array_equal(initial_noise(7, 2, 8), both)


@pytest.fixture(scope="module")
def tiny():
    return build_models(model_config("tiny"), ("unet", "vae_decoder"), seed=3)


def _our_sampler(tiny, noise, context, uncond, steps, scale):
    def predict(latents, t_emb, ctx):
        return tiny.unet([latents, t_emb, ctx], training=False)

    latents = ddim_sample(predict, noise, context, uncond, NoiseSchedule(), steps, scale, time_embedding_dim=32)
    return pixels_to_uint8(tiny.vae_decoder(latents))


def test_ddim_with_guidance_matches_keras_cv_generate_image(tiny):
    """keras-cv's own DDIM + classifier-free guidance loop, run on our tiny networks."""
    from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusion, StableDiffusionBase

    rng = np.random.default_rng(0)
    noise = initial_noise(11, 2, 8)
    context = rng.normal(size=(2, 77, 32)).astype("float32")
    uncond = rng.normal(size=(1, 77, 32)).astype("float32")
    reference = StableDiffusion(128, 128, jit_compile=False)
    reference._diffusion_model = tiny.unet  # inputs are named as keras-cv's
    reference._decoder = tiny.vae_decoder
    reference._get_unconditional_context = lambda: uncond
    # keras-cv's embedding, at the tiny UNet's width (32) instead of SD's 320.
    reference._get_timestep_embedding = lambda t, n: StableDiffusionBase._get_timestep_embedding(None, t, n, dim=32)
    expected = reference.generate_image(
        context, batch_size=2, num_steps=5, unconditional_guidance_scale=7.5, diffusion_noise=noise
    )
    got = _our_sampler(tiny, noise, context, np.repeat(uncond, 2, axis=0), 5, 7.5)
    # uint8 images; float round-off (batched vs separate passes) may flip a truncation by one level.
    assert np.abs(expected.astype(int) - got.astype(int)).max() <= 1
    assert np.mean(expected != got) < 0.01


def test_ddim_is_deterministic_and_guidance_matters(tiny):
    rng = np.random.default_rng(1)
    noise = initial_noise(5, 1, 8)
    context = rng.normal(size=(1, 77, 32)).astype("float32")
    uncond = rng.normal(size=(1, 77, 32)).astype("float32")
    first = _our_sampler(tiny, noise, context, uncond, 3, 7.5)
    np.testing.assert_array_equal(first, _our_sampler(tiny, noise, context, uncond, 3, 7.5))
    assert not np.array_equal(first, _our_sampler(tiny, noise, context, uncond, 3, 1.0))

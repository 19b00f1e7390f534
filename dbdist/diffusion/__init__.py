"""Diffusion maths (keras.ops only): noise schedule, timestep embedding, latents, DDIM."""

from dbdist.diffusion.latents import sample_latents
from dbdist.diffusion.schedule import NoiseSchedule, timestep_embedding

__all__ = ["NoiseSchedule", "sample_latents", "timestep_embedding"]

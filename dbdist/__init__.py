"""dbdist: DreamBooth fine-tuning of Stable Diffusion across accelerators."""

__version__ = "0.1.0"

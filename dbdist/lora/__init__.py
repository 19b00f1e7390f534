"""LoRA DreamBooth: adapters on the attention projections (engine-free), and their files."""

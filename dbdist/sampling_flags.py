"""absl flags of the commands that draw images from a run (generate, evaluate): one definition each."""

from absl import flags

RUN_DIR = flags.DEFINE_string("run_dir", "", "A `dbdist.train` output dir: its preset, weights and export/unet.h5 are used.")
NEGATIVE_PROMPT = flags.DEFINE_string(
    "negative_prompt", "", "Steer away from this; empty uses the empty prompt as the unconditional input.")
NUM_IMAGES = flags.DEFINE_integer("num_images", 4, "Images to draw (evaluate: per prompt).")
NUM_STEPS = flags.DEFINE_integer("num_steps", 50, "DDIM steps.")
GUIDANCE_SCALE = flags.DEFINE_float("guidance_scale", 7.5, "Classifier-free guidance scale (1 = no guidance).")

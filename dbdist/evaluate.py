"""python -m dbdist.evaluate: how well a DreamBooth run learned its subject, in numbers.

How to run:
  python -m dbdist.evaluate --run_dir=/tmp/db/run --num_images=16 --num_steps=25 --guidance_scale=3 \
      --output_dir=/tmp/db/eval
  python -m dbdist.evaluate --model=toy --output_dir=/tmp/db/eval_base   # the shipped base model
What to expect: `evaluation.json` and a table on stdout (and `<prompt key>.png` grids) in
output_dir. On `toy` the judge (dbdist/toy/judge.py) reads every drawn image and the table
gives subject fidelity, recontextualisation, prior preservation and prompt fidelity
(dbdist/toy/scores.py). On other presets (--judge=paper) it gives the DreamBooth paper's DINO,
CLIP-I and CLIP-T (dbdist/metrics/) for the instance prompt and four recontextualisations,
against the run's instance photos (pixel records, or --instance_dir); keras-hub downloads the
--dino_preset and --clip_preset weights on first use. The instance and class prompts are those
of the run's records (manifest.json). Image i of a prompt depends only on (--seed, i).
"""

from dbdist import quiet  # noqa: F401 (first: TensorFlow reads its log level when imported)

import json
import os

import tensorflow as tf
from absl import flags, logging

from dbdist import common_flags, errors, instance_flags, run_dir, sampling_flags  # noqa: F401 (instance_flags: --instance_dir)
from dbdist.config import model_config
from dbdist.data import images
from dbdist.data.manifest import read_manifest
from dbdist.data.writer import write_bytes_atomically
from dbdist.errors import MissingInputError, UserError
from dbdist.metrics import backbones, paper_eval, subject_scores
from dbdist.sampling import Sampler
from dbdist.text.tokenizer import ClipTokenizer, resolve_vocab_path
from dbdist.weights.pretrained import load_networks

# --instance_dir (--judge=paper): the subject's photos; default: the run's pixel records' instance images.
for _shared_flag in ("model", "weights", "vocab_path", "output_dir", "seed", "instance_dir"):
    flags.declare_key_flag(_shared_flag)
# --run_dir (empty: --model's base weights), --num_images (per prompt), --num_steps, --guidance_scale,
# --negative_prompt (on toy, empty means the world's unconditional caption "a photo").
flags.adopt_module_key_flags(sampling_flags)

FLAGS = flags.FLAGS
flags.DEFINE_enum("judge", "auto", ["auto", "toy", "paper"],
                  "Who reads the images: the toy world's judge (toy runs only) or the DreamBooth paper's DINO, "
                  "CLIP-I and CLIP-T; auto: toy for toy runs, paper otherwise.")
flags.DEFINE_string("dino_preset", backbones.DEFAULT_DINO_PRESET,
                    "--judge=paper: keras-hub DINOv2 preset (or a save_to_preset directory) for the DINO score.")
flags.DEFINE_string("clip_preset", backbones.DEFAULT_CLIP_PRESET,
                    "--judge=paper: keras-hub CLIP preset (or a save_to_preset directory) for CLIP-I and CLIP-T.")



def _read_run(path):
    """(the run's config.json, its ModelConfig as trained, {network: exported file})."""
    run = run_dir.read_config(path)
    files = run_dir.exported_files(path)
    if "unet" not in files:
        unet = os.path.join(path, "export", "unet.h5")
        raise MissingInputError(f"--run_dir {path} has no export ({unet} is missing); expected a finished "
                                "dbdist.train run (training exports when it reaches --max_train_steps)")
    return run, run_dir.trained_model_config(run), files


def _run_manifest(run):
    """The manifest of the run's records (their prompts and instance images)."""
    data_dir = run["data"]["data_dir"]
    if not tf.io.gfile.exists(os.path.join(data_dir, "manifest.json")):
        raise MissingInputError(f"the run's records {data_dir} (config.json data.data_dir) have no manifest.json; "
                                "evaluate reads the instance and class prompts from it")
    return data_dir, read_manifest(data_dir)


def _judge_for(preset, run):
    """'toy' or 'paper'; --judge=auto: the toy world's judge for toy models, the paper's scores otherwise."""
    judge = FLAGS.judge if FLAGS.judge != "auto" else ("toy" if preset == "toy" else "paper")
    if judge == "toy" and preset != "toy":
        raise UserError(f"--judge=toy reads the toy world's images, but the run was trained as {preset!r}; "
                        "expected a --model=toy run")
    if judge == "paper" and run is None:
        raise UserError(f"--judge=paper compares a run's images with its subject's photos, but no --run_dir was "
                        f"given (--model={preset}'s base weights); expected --run_dir")
    return judge


def format_table(result):
    width = max(len(k) for k in result)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  -----"]
    lines += [f"{k.ljust(width)}  {'n/a' if v is None else f'{v:.3f}'}" for k, v in result.items()]
    return "\n".join(lines)


def main(argv):
    del argv
    from dbdist.toy import judge as toy_judge
    from dbdist.toy import scores, world

    common_flags.require("output_dir")
    if FLAGS.run_dir:
        run, config, files = _read_run(FLAGS.run_dir)
        weights_dir = FLAGS.weights or run["runtime"]["weights"]
    else:
        run, config, files, weights_dir = None, model_config(FLAGS.model), {}, FLAGS.weights
    preset = config.preset
    judge = _judge_for(preset, run)
    if run is None:  # the shipped toy base model: the demo's prompts
        instance_prompt, class_prompt = scores.DEMO_INSTANCE_PROMPT, scores.DEMO_CLASS_PROMPT
    else:
        data_dir, manifest = _run_manifest(run)
        instance_prompt, class_prompt = manifest.instance_prompt, manifest.class_prompt
    if judge == "paper":
        wanted = paper_eval.prompts(instance_prompt)
        # Before drawing anything: a missing --instance_dir fails in seconds, not after the sampling.
        real_images = paper_eval.real_instance_images(data_dir, manifest, FLAGS.instance_dir)
        embedders = backbones.SubjectEmbedders.from_presets(FLAGS.dino_preset, FLAGS.clip_preset)
    else:
        wanted = scores.prompts(instance_prompt, class_prompt)
    # The toy model learnt its unconditional prediction from the caption "a photo" (world.UNCONDITIONAL).
    negative = FLAGS.negative_prompt or (world.UNCONDITIONAL if preset == "toy" else "")

    tokenizer = ClipTokenizer(resolve_vocab_path(FLAGS.vocab_path))
    networks = load_networks(config, ("unet", "vae_decoder", "text_encoder"), weights_dir=weights_dir, files=files)
    sampler = Sampler(config, networks, tokenizer, compile=tf.function)
    drawn = {}
    for key, prompt in wanted.items():
        drawn[key] = sampler.images(prompt, num_images=FLAGS.num_images, seed=FLAGS.seed, num_steps=FLAGS.num_steps,
                                    guidance_scale=FLAGS.guidance_scale, negative_prompt=negative,
                                    batch_size=FLAGS.num_images)
        images.save_png(images.make_grid(drawn[key], columns=8),
                        os.path.join(FLAGS.output_dir, key.replace("/", "-") + ".png"))
        logging.info("%s: %r drawn", key, prompt)
    report = {"run_dir": FLAGS.run_dir, "preset": preset, "judge": judge, "num_images": FLAGS.num_images,
              "num_steps": FLAGS.num_steps, "guidance_scale": FLAGS.guidance_scale, "negative_prompt": negative,
              "seed": FLAGS.seed, "prompts": wanted}
    if judge == "paper":
        identifier = paper_eval.identifier_words(instance_prompt, class_prompt)
        generated = paper_eval.embed(embedders, drawn, wanted, identifier)
        real = {"dino": embedders.dino_images(real_images), "clip_image": embedders.clip_images(real_images)}
        result = subject_scores.score(generated, real)
        report.update({"dino_preset": FLAGS.dino_preset, "clip_preset": FLAGS.clip_preset,
                       "num_real_images": len(real_images),
                       "clip_t_prompts": {k: paper_eval.clip_t_prompt(p, identifier) for k, p in wanted.items()}})
    else:
        result = scores.score({key: toy_judge.judge_all(pictures) for key, pictures in drawn.items()}, class_prompt)
    report["metrics"] = result
    path = os.path.join(FLAGS.output_dir, "evaluation.json")
    write_bytes_atomically(path, (json.dumps(report, indent=2) + "\n").encode())
    print(format_table(result))
    logging.info("wrote %s", path)


if __name__ == "__main__":
    errors.run(main)

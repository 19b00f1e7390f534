"""LoRA DreamBooth (dbdist/lora/) on the tiny preset: adapters, merge, files, training, refusals."""

import json

import numpy as np
import pytest
import safetensors.numpy
import tensorflow as tf
from commands import run_command

from dbdist.config import DataConfig, OptimConfig, RunConfig, RuntimeConfig, TrainConfig, model_config
from dbdist.errors import UserError
from dbdist.lora.adapters import add_adapters, adapted_layers, adapter_weights
from dbdist.lora.export import DIFFUSERS_FILE, KOHYA_FILE, apply_lora, export_lora, read_lora_for
from dbdist.lora.targets import TEXT_ENCODER, UNET
from dbdist.models import build_models
from dbdist.training.checkpointing import check_resume_compatible
from dbdist.weights.keras_cv_h5 import load_keras_cv_h5
from dbdist.weights.pretrained import RANDOM_INIT_SEED

TINY = model_config("tiny")
# tiny: 7 spatial transformers x 2 attentions x 4 projections; 2 text layers x 4 projections.
UNET_PROJECTIONS, TEXT_PROJECTIONS = 56, 8
TRAIN_FLAGS = dict(model="tiny", strategy="one_device", global_batch_size=2, log_every=1, seed=0)
LORA_FLAGS = dict(lora_rank=2, lora_alpha=4, lora_text_encoder=True, learning_rate=1e-2, text_encoder_learning_rate=1e-2)


def _base():
    """tiny's UNet and text encoder as every command builds them (fixed random weights)."""
    return build_models(TINY, ("unet", "text_encoder"), seed=RANDOM_INIT_SEED)


def _inputs():
    rng = np.random.default_rng(0)
    unet_inputs = [rng.normal(size=(2, 8, 8, 4)).astype("float32"), rng.normal(size=(2, 32)).astype("float32"),
                   rng.normal(size=(2, 77, 32)).astype("float32")]
    tokens = rng.integers(0, TINY.text_encoder.vocab_size, size=(2, 77)).astype("int32")
    return unet_inputs, tokens


def _outputs(models):
    unet_inputs, tokens = _inputs()
    return np.asarray(models.unet(unet_inputs)), np.asarray(models.text_encoder(tokens))


def _assert_close(actual, expected):
    # float32 sums of the same terms in another order (merged kernel vs x(W + s AB)): 1e-5 of the output's scale.
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_fresh_adapters_keep_the_base_outputs_and_are_all_that_trains():
    models = _base()
    before = _outputs(models)
    add_adapters(models.unet, UNET, TINY, rank=4, seed=0)
    add_adapters(models.text_encoder, TEXT_ENCODER, TINY, rank=4, seed=0)
    after = _outputs(models)
    for a, b in zip(before, after):  # B starts at zero: bit for bit the base network
        np.testing.assert_array_equal(a, b)
    for model, projections in ((models.unet, UNET_PROJECTIONS), (models.text_encoder, TEXT_PROJECTIONS)):
        names = [v.name for v in model.trainable_variables]
        assert names == ["lora_kernel_a", "lora_kernel_b"] * projections
    first = adapted_layers(models.unet, UNET, TINY)[0].dense
    assert tuple(first.lora_kernel_a.shape) == (32, 4) and first.lora_alpha == 4
    # diffusers' DreamBooth init: A ~ N(0, 1/rank) (PEFT "gaussian"), B = 0.
    a = np.concatenate([np.ravel(p.dense.lora_kernel_a) for p in adapted_layers(models.unet, UNET, TINY)])
    assert abs(a.std() - 0.25) < 0.01  # ~20k draws: the std's sampling error is ~0.0013
    assert not np.any([np.any(p.dense.lora_kernel_b) for p in adapted_layers(models.unet, UNET, TINY)])


def _random_adapters(models, rank=4, alpha=8.0):
    """Adapters with non-zero A and B (alpha / rank = 2), as if trained."""
    rng = np.random.default_rng(1)
    for network in (UNET, TEXT_ENCODER):
        for pair in add_adapters(getattr(models, network), network, TINY, rank, alpha):
            for variable in (pair.dense.lora_kernel_a, pair.dense.lora_kernel_b):
                variable.assign(rng.normal(scale=0.1, size=variable.shape).astype("float32"))
    return models


def test_export_merge_and_import_give_the_adapted_outputs(tmp_path):
    models = _random_adapters(_base())
    adapted = _outputs(models)
    trained = {}
    for network in (UNET, TEXT_ENCODER):
        trained.update(adapter_weights(adapted_layers(getattr(models, network), network, TINY)))
    export_lora(tmp_path, TINY, {UNET: models.unet, TEXT_ENCODER: models.text_encoder}, merge=True)

    # diffusers' (PEFT) names and torch's (out, in) orientation; alpha / rank folded into B.
    tensors = safetensors.numpy.load_file(tmp_path / DIFFUSERS_FILE)
    assert len(tensors) == 2 * (UNET_PROJECTIONS + TEXT_PROJECTIONS)
    prefix = "unet.down_blocks.0.attentions.0.transformer_blocks.0"
    assert tensors[f"{prefix}.attn1.to_q.lora_A.weight"].shape == (4, 32)
    assert tensors[f"{prefix}.attn2.to_k.lora_A.weight"].shape == (4, 32)  # context_dim 32
    assert tensors["unet.up_blocks.2.attentions.1.transformer_blocks.0.attn2.to_out.0.lora_B.weight"].shape == (32, 4)
    assert tensors["text_encoder.text_model.encoder.layers.1.self_attn.out_proj.lora_B.weight"].shape == (32, 4)
    kohya = safetensors.numpy.load_file(tmp_path / KOHYA_FILE)
    assert float(kohya["lora_unet_mid_block_attentions_0_transformer_blocks_0_attn1_to_v.alpha"]) == 8.0
    assert "lora_te_text_model_encoder_layers_0_self_attn_q_proj.lora_up.weight" in kohya

    for name in (DIFFUSERS_FILE, KOHYA_FILE):
        read = read_lora_for(TINY, tmp_path / name)
        assert read.keys() == trained.keys()
        for target, weights in read.items():  # the same delta W (diffusers' file: B carries the scale)
            np.testing.assert_allclose(weights.delta(), trained[target].delta(), rtol=1e-6, atol=1e-9)
        base = _base()
        apply_lora(base, read)
        for actual, expected in zip(_outputs(base), adapted):
            _assert_close(actual, expected)

    # --merge_lora: the merged network itself, and the keras-cv files it wrote, loaded into plain networks.
    for actual, expected in zip(_outputs(models), adapted):
        _assert_close(actual, expected)
    plain = _base()
    load_keras_cv_h5(plain.unet, tmp_path / "unet.h5")
    load_keras_cv_h5(plain.text_encoder, tmp_path / "text_encoder.h5")
    for actual, expected in zip(_outputs(plain), adapted):
        _assert_close(actual, expected)


def _write(path, tensors):
    path.write_bytes(safetensors.numpy.save({k: np.asarray(v, np.float32) for k, v in tensors.items()}))
    return path


def test_lora_files_that_do_not_fit_the_model_are_refused_naming_the_key(tmp_path):
    q = "unet.down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"
    good = {f"{q}.lora_A.weight": np.zeros((4, 32)), f"{q}.lora_B.weight": np.zeros((32, 4))}
    assert len(read_lora_for(TINY, _write(tmp_path / "good.safetensors", good))) == 1
    cases = {
        # sd-v1's width: a file for another model.
        "wide": ({f"{q}.lora_A.weight": np.zeros((4, 320)), f"{q}.lora_B.weight": np.zeros((32, 4))},
                 rf"'{q}.lora_A.weight' has shape \(4, 320\), expected \(4, 32\)"),
        "ranks": ({f"{q}.lora_A.weight": np.zeros((4, 32)), f"{q}.lora_B.weight": np.zeros((32, 8))},
                  rf"'{q}.lora_B.weight' has shape \(32, 8\), expected \(32, 4\)"),
        "target": ({"unet.down_blocks.0.resnets.0.conv1.lora_A.weight": np.zeros((4, 32))},
                   "'unet.down_blocks.0.resnets.0.conv1.lora_A.weight' adapts 'down_blocks.0.resnets.0.conv1'"),
        "half": ({f"{q}.lora_A.weight": np.zeros((4, 32))}, rf"'{q}.lora_A.weight' has no matching up"),
        "unknown": ({"model.diffusion_model.out.0.weight": np.zeros(3)}, "not a LoRA weight of a known layout"),
    }
    for name, (tensors, message) in cases.items():
        with pytest.raises(UserError, match=message):
            read_lora_for(TINY, _write(tmp_path / f"{name}.safetensors", tensors))
    (tmp_path / "text.safetensors").write_text("not safetensors")
    with pytest.raises(UserError, match="not a readable .safetensors file"):
        read_lora_for(TINY, tmp_path / "text.safetensors")


def test_bad_lora_flags_are_refused_before_any_work(records_dir, vocab_path, tmp_path):
    for flags, message in (
        (dict(lora_rank=0), "lora_rank must be >= 1, got 0"),
        (dict(lora_rank=-2), "lora_rank must be >= 1, got -2"),
        (dict(lora_rank=4, lora_alpha=0), "lora_alpha must be > 0, got 0.0"),
        (dict(merge_lora=True), "merge_lora needs lora_rank"),
        (dict(lora_rank=4, train_text_encoder=True), "with lora_rank use lora_text_encoder"),
    ):
        with pytest.raises(UserError, match=message):
            run_command("train", data_dir=records_dir, output_dir=tmp_path / "run", **flags, **TRAIN_FLAGS)
        assert not (tmp_path / "run").exists()
    bad = _write(tmp_path / "sd1.safetensors", {
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight": np.zeros((4, 768)),
        "unet.mid_block.attentions.0.transformer_blocks.0.attn2.to_k.lora_B.weight": np.zeros((64, 4))})
    with pytest.raises(UserError, match=r"attn2.to_k.lora_A.weight' has shape \(4, 768\), expected \(4, 32\)"):
        run_command("generate", model="tiny", prompt="a ball", lora=bad, output_dir=tmp_path / "out",
                    vocab_path=vocab_path)
    assert not (tmp_path / "out").exists()


def test_resume_refuses_other_lora_settings(tmp_path):
    def config(**train):
        return json.loads(RunConfig(TINY, DataConfig(), OptimConfig(), TrainConfig(**train), RuntimeConfig()).to_json())

    (tmp_path / "config.json").write_text(json.dumps(config(lora_rank=4, lora_alpha=4.0)))
    check_resume_compatible(tmp_path / "config.json", config(lora_rank=4, lora_alpha=4.0))
    for changed, message in ((dict(lora_rank=8, lora_alpha=4.0), "train.lora_rank: 4 in the checkpoint, 8 now"),
                             (dict(lora_rank=4, lora_alpha=1.0), "train.lora_alpha: 4.0 in the checkpoint, 1.0 now"),
                             (dict(), "train.lora_rank: 4 in the checkpoint, None now"),
                             (dict(lora_rank=4, lora_alpha=4.0, lora_text_encoder=True), "train.lora_text_encoder")):
        with pytest.raises(UserError, match=message):
            check_resume_compatible(tmp_path / "config.json", config(**changed))


def _restored(run_dir):
    """tiny's base networks with adapters, restored from the run's newest checkpoint."""
    models = _base()
    add_adapters(models.unet, UNET, TINY, rank=2, alpha=4.0)
    add_adapters(models.text_encoder, TEXT_ENCODER, TINY, rank=2, alpha=4.0)
    path = tf.train.latest_checkpoint(str(run_dir / "checkpoints"))
    tf.train.Checkpoint(unet=models.unet, text_encoder=models.text_encoder).restore(path).expect_partial()
    return models


def test_lora_training_changes_only_the_adapters_and_exports_them(records_dir, vocab_path, tmp_path):
    run_dir = tmp_path / "run"
    run_command("train", data_dir=records_dir, output_dir=run_dir, max_train_steps=2, **LORA_FLAGS, **TRAIN_FLAGS)
    config = json.loads((run_dir / "config.json").read_text())["train"]
    assert (config["lora_rank"], config["lora_alpha"], config["lora_text_encoder"]) == (2, 4.0, True)
    assert not (run_dir / "export" / "unet.h5").exists()  # no --merge_lora: the adapters are the result

    trained, base = _restored(run_dir), _base()
    for network in (UNET, TEXT_ENCODER):
        model, base_model = getattr(trained, network), getattr(base, network)
        base_variables = [v for v in model.weights if v.name not in ("lora_kernel_a", "lora_kernel_b")]
        assert len(base_variables) == len(base_model.weights)
        for variable, original in zip(base_variables, base_model.weights):  # frozen: bit for bit
            assert np.asarray(variable).tobytes() == np.asarray(original).tobytes(), variable.path
        assert all(np.any(p.dense.lora_kernel_b) for p in adapted_layers(model, network, TINY))  # trained
    # The exported file is what was trained: base + file gives the checkpoint's outputs.
    apply_lora(base, read_lora_for(TINY, run_dir / "export" / DIFFUSERS_FILE))
    for actual, expected in zip(_outputs(base), _outputs(trained)):
        _assert_close(actual, expected)


@pytest.mark.slow  # two more train runs and three generate runs (minutes on 2 cores)
def test_lora_run_resumes_and_generate_applies_its_adapters(records_dir, vocab_path, tmp_path):
    run_dir = tmp_path / "run"
    for steps in (2, 3):  # the second resumes: the checkpoint holds the adapters and their optimizer state
        run_command("train", data_dir=records_dir, output_dir=run_dir, max_train_steps=steps, checkpoint_every=2,
                    **LORA_FLAGS, **TRAIN_FLAGS)
    assert [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    # generate --run_dir: the run's base weights plus its export/lora.safetensors, scaled by --lora_scale.
    for scale, name in ((1.0, "lora"), (0.0, "base")):
        run_command("generate", run_dir=run_dir, prompt="a photo of sks ball", num_images=1, num_steps=2, seed=0,
                    output_dir=tmp_path / name, vocab_path=vocab_path, lora_scale=scale)
    run_command("generate", model="tiny", prompt="a photo of sks ball", num_images=1, num_steps=2, seed=0,
                output_dir=tmp_path / "plain", vocab_path=vocab_path)
    image = lambda name: (tmp_path / name / "image_000.png").read_bytes()
    assert image("base") == image("plain") != image("lora")


@pytest.mark.slow  # builds the fixture UNet three times (~40 s of CPU)
def test_diffusers_loads_our_lora_files_and_gives_our_outputs():
    """tests/fixtures/lora/: check_lora_in_diffusers.py ran diffusers' own loader on these files of ours and
    recorded its outputs; here, without torch, the files are what dbdist writes today, and our import of
    the fixture UNet plus each file gives diffusers' outputs."""
    from fixtures import lora_fixture
    from dbdist.lora.files import lora_tensors
    from dbdist.models import StableDiffusionModels

    networks = lora_fixture.adapted_networks()
    weights = lora_fixture.adapters_of(networks)
    recorded = dict(np.load(lora_fixture.OUT / "diffusers_outputs.npz"))
    inputs = dict(np.load(lora_fixture.UNET_INPUTS))
    for layout, name in lora_fixture.FILES.items():
        path = lora_fixture.OUT / name
        committed = safetensors.numpy.load_file(path)
        written = lora_tensors(weights, layout)
        assert committed.keys() == written.keys()
        for key, array in written.items():
            np.testing.assert_array_equal(committed[key], array, err_msg=key)
        models = StableDiffusionModels(lora_fixture.CONFIG, unet=lora_fixture.fixture_unet(),
                                       text_encoder=lora_fixture.fixture_text_encoder())
        assert apply_lora(models, read_lora_for(lora_fixture.CONFIG, path)) == [TEXT_ENCODER, UNET]
        ours = lora_fixture.unet_outputs(models.unet, inputs)
        # The fixture UNet runs with diffusers' maths (faithful_config): float32 summation order differs, 1e-5 of
        # the outputs' scale (measured 5.2e-7). A wrong name, orientation or scale shows at ~0.2 (the adapters' effect).
        theirs = recorded[f"{layout}_unet_output"]
        np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5 * np.abs(theirs).max())

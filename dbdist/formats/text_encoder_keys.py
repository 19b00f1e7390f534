"""The text encoder's variables as transformers' `CLIPTextModel` and the original SD checkpoints name them.

diffusers folders store both SD families' text towers as a transformers CLIPTextModel
(text_encoder/model.safetensors): `text_model.embeddings.{token,position}_embedding.weight`,
`text_model.encoder.layers.N.{layer_norm1, self_attn.{q,k,v,out}_proj, layer_norm2, mlp.fc1, mlp.fc2}`,
`text_model.final_layer_norm`. SD 2.x's OpenCLIP-H tower is stored there with
`hidden_act: gelu` and `num_hidden_layers: 23`: SD 2 conditions on the penultimate
layer's output (then the final norm), so diffusers keeps 23 of OpenCLIP's 24 blocks,
exactly what dbdist's sd-v2 text encoder builds. transformers >= 5.6 writes the same
keys without `text_model.`; `canonical_tensors` adds it back.

Single files keep each family's own layout:
- SD 1.x (OpenAI CLIP, quick-GELU): the same CLIPTextModel keys under `cond_stage_model.transformer.`
  (diffusers' single_file_utils.convert_ldm_clip_checkpoint strips just that prefix).
- SD 2.x (OpenCLIP, GELU): under `cond_stage_model.model.`: `token_embedding.weight`,
  `positional_embedding` (a bare parameter), `transformer.resblocks.N.{ln_1, attn.in_proj_weight,
  attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}`, `ln_final`. q, k and v are one
  (3W, W) tensor, in that order. As in diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py
  (`textenc_conversion_lst`, `convert_text_enc_state_dict_v20`), our export holds the 23 blocks SD 2
  uses and no `text_projection`/`logit_scale`; on import the 24th block, `text_projection` and
  `logit_scale` of a full OpenCLIP file are ignored, as single_file_utils' SD_2_TEXT_ENCODER_KEYS_TO_IGNORE
  ignores them. (A1111 and ComfyUI load such files with strict=False; SD 2 never runs that block.)

Which single-file family a config is follows its activation: OpenAI CLIP's quick-GELU, OpenCLIP's GELU.

Public:
  key_map(text_encoder, model_config, layout) -> [TensorKey, ...], every variable in the model's order
  canonical_tensors(tensors, layout) -> the same tensors under the names key_map uses
  ignored_keys(model_config, layout) -> predicate: keys of a text encoder file that dbdist does not load
  diffusers_config(model_config) -> transformers' text_encoder/config.json for this tower
  config_from_diffusers(config_json, text_encoder_config[, source]) -> the TextEncoderConfig it describes
  faithful_config(model_config) -> model_config with OpenCLIP's exact GELU where the preset has keras-cv's tanh form
"""

import dataclasses
import re

import numpy as np

from dbdist.errors import UserError
from dbdist.formats import tensor_map
from dbdist.models.text_encoder import EncoderLayer, TokenAndPositionEmbedding

DIFFUSERS_PREFIX = "text_model."
CLIP_PREFIX = "cond_stage_model.transformer.text_model."
OPEN_CLIP_PREFIX = "cond_stage_model.model."

_CLIP_PARTS = (  # (path of our layer inside an EncoderLayer, transformers' name, OpenCLIP's name)
    ("norm1", "layer_norm1", "ln_1"),
    ("attention.out_proj", "self_attn.out_proj", "attn.out_proj"),
    ("norm2", "layer_norm2", "ln_2"),
    ("fc1", "mlp.fc1", "mlp.c_fc"),
    ("fc2", "mlp.fc2", "mlp.c_proj"),
)


def is_open_clip(model_config):
    """Whether the single-file layout of this tower is OpenCLIP's (SD 2.x) rather than OpenAI CLIP's."""
    return model_config.text_encoder.activation != "quick_gelu"


def _layers(text_encoder):
    layers = [layer for layer in text_encoder.layers if layer.weights]
    kinds = [type(layer).__name__ for layer in layers]
    if (len(layers) < 2 or not isinstance(layers[0], TokenAndPositionEmbedding)
            or not all(isinstance(layer, EncoderLayer) for layer in layers[1:-1])):
        raise ValueError(f"text encoder '{text_encoder.name}' has layers {kinds}; expected an embedding, "
                         "encoder layers and a final norm, as build_text_encoder makes")
    return layers[0], layers[1:-1], layers[-1]


def _sublayer(layer, path):
    for name in path.split("."):
        layer = getattr(layer, name)
    return layer


def _clip_keys(text_encoder, prefix):
    embedding, blocks, final_norm = _layers(text_encoder)
    keys = (tensor_map.embedding(embedding.token_embedding, f"{prefix}embeddings.token_embedding")
            + tensor_map.embedding(embedding.position_embedding, f"{prefix}embeddings.position_embedding"))
    for n, block in enumerate(blocks):
        layer = f"{prefix}encoder.layers.{n}"
        keys += tensor_map.norm(block.norm1, f"{layer}.layer_norm1")
        for projection in ("q_proj", "k_proj", "v_proj", "out_proj"):
            keys += tensor_map.dense(getattr(block.attention, projection), f"{layer}.self_attn.{projection}")
        keys += tensor_map.norm(block.norm2, f"{layer}.layer_norm2")
        keys += tensor_map.dense(block.fc1, f"{layer}.mlp.fc1") + tensor_map.dense(block.fc2, f"{layer}.mlp.fc2")
    return keys + tensor_map.norm(final_norm, f"{prefix}final_layer_norm")


def _same(array):
    return array


def _fused_slice(index, width, transpose):
    """to_keras of part `index` of a (3W, ...) in_proj tensor: rows [index*W, (index+1)*W), (in, out) if a kernel."""
    def to_keras(array):
        block = array[index * width:(index + 1) * width]
        return np.ascontiguousarray(block.T if transpose else block)
    return to_keras


def _fused_qkv(attention, key):
    """The three projections as OpenCLIP's `in_proj_weight` (3W, W) and `in_proj_bias` (3W,)."""
    width = attention.q_proj.units
    keys = []
    for index, name in enumerate(("q_proj", "k_proj", "v_proj")):
        dense = getattr(attention, name)
        keys.append(tensor_map.TensorKey(dense.kernel, f"{key}.in_proj_weight", (3 * width, width),
                                         _fused_slice(index, width, True), lambda a: np.ascontiguousarray(a.T),
                                         part=(index, 3)))
        keys.append(tensor_map.TensorKey(dense.bias, f"{key}.in_proj_bias", (3 * width,),
                                         _fused_slice(index, width, False), _same, part=(index, 3)))
    return keys


def _open_clip_keys(text_encoder):
    embedding, blocks, final_norm = _layers(text_encoder)
    positions = embedding.position_embedding.embeddings
    keys = tensor_map.embedding(embedding.token_embedding, f"{OPEN_CLIP_PREFIX}token_embedding")
    keys.append(tensor_map.TensorKey(positions, f"{OPEN_CLIP_PREFIX}positional_embedding", tuple(positions.shape),
                                     _same, _same))
    for n, block in enumerate(blocks):
        prefix = f"{OPEN_CLIP_PREFIX}transformer.resblocks.{n}"
        keys += tensor_map.norm(block.norm1, f"{prefix}.ln_1")
        keys += _fused_qkv(block.attention, f"{prefix}.attn")
        keys += tensor_map.dense(block.attention.out_proj, f"{prefix}.attn.out_proj")
        keys += tensor_map.norm(block.norm2, f"{prefix}.ln_2")
        keys += tensor_map.dense(block.fc1, f"{prefix}.mlp.c_fc") + tensor_map.dense(block.fc2, f"{prefix}.mlp.c_proj")
    return keys + tensor_map.norm(final_norm, f"{OPEN_CLIP_PREFIX}ln_final")


def key_map(text_encoder, model_config, layout):
    """[TensorKey, ...]: every variable of `text_encoder` (built from `model_config.text_encoder`), in its
    order, with its key and shape in `layout` ("diffusers": keys of text_encoder/model.safetensors;
    "original": full keys of a single-file checkpoint, OpenAI CLIP's or OpenCLIP's by the config)."""
    tensor_map.check_layout(layout)
    blocks = _layers(text_encoder)[1]
    if len(blocks) != model_config.text_encoder.num_layers:
        raise ValueError(f"text encoder '{text_encoder.name}' has {len(blocks)} layers, its config "
                         f"{model_config.text_encoder.num_layers}: was it built from another config?")
    if layout == "diffusers":
        keys = _clip_keys(text_encoder, DIFFUSERS_PREFIX)
    elif is_open_clip(model_config):
        keys = _open_clip_keys(text_encoder)
    else:
        keys = _clip_keys(text_encoder, CLIP_PREFIX)
    covered = {id(k.variable) for k in keys}
    missing = [v.path for v in text_encoder.weights if id(v) not in covered]
    if missing or len(covered) != len(keys):
        raise AssertionError(f"text encoder key map covers variables twice or misses {missing[:3]}")
    return keys


def canonical_tensors(tensors, layout):
    """`tensors` of a text encoder file under key_map's names: a diffusers text_encoder/ file
    written by transformers >= 5.6 lacks the `text_model.` prefix, which is added back."""
    if layout != "diffusers" or any(key.startswith(DIFFUSERS_PREFIX) for key in tensors):
        return dict(tensors)
    return {(key if key.startswith("text_projection") else DIFFUSERS_PREFIX + key): array
            for key, array in tensors.items()}


def ignored_keys(model_config, layout):
    """A predicate: True for keys of a text encoder file that hold nothing dbdist's tower uses.

    transformers' `position_ids` buffer (older files), a projection head, and in OpenCLIP files
    the blocks after the ones SD conditions on, `text_projection` and `logit_scale`.
    """
    n = model_config.text_encoder.num_layers
    if layout == "original" and is_open_clip(model_config):
        unused = re.compile(re.escape(OPEN_CLIP_PREFIX)
                            + r"(text_projection|logit_scale|attn_mask|transformer\.resblocks\.(\d+)\..*)$")

        def ignored(key):
            match = unused.match(key)
            return bool(match) and (match.group(2) is None or int(match.group(2)) >= n)
        return ignored
    return lambda key: key.endswith("position_ids") or key.startswith("text_projection") or key.endswith("logit_scale")


# dbdist's activation -> transformers' hidden_act. keras-cv's tanh GELU is written as "gelu", the
# activation SD 2.x was trained with, which it approximates.
_HIDDEN_ACT = {"quick_gelu": "quick_gelu", "gelu": "gelu", "gelu_erf": "gelu"}
_ACTIVATION = {"quick_gelu": "quick_gelu", "gelu": "gelu_erf"}


def faithful_config(model_config):
    """`model_config` with the text encoder computing as transformers and OpenCLIP do: exact (erf) GELU
    instead of keras-cv's tanh form (on the small SD 2.x fixture: 1.5e-6 from transformers' outputs
    instead of 9.2e-4, of about 4). SD 1.x's quick-GELU is exact already."""
    c = model_config.text_encoder
    activation = "gelu_erf" if c.activation == "gelu" else c.activation
    return dataclasses.replace(model_config, text_encoder=dataclasses.replace(c, activation=activation))


def config_from_diffusers(config_json, text_encoder_config, source="text_encoder/config.json"):
    """`text_encoder_config` with the shapes and activation of transformers' text_encoder/config.json ({...})."""
    act = config_json.get("hidden_act", "quick_gelu")
    if act not in _ACTIVATION:
        raise UserError(f"{source} has hidden_act={act!r}; dbdist builds {sorted(_ACTIVATION)}")
    width = config_json["hidden_size"]
    if config_json.get("intermediate_size", 4 * width) != 4 * width:
        raise UserError(f"{source} has intermediate_size={config_json['intermediate_size']}; "
                         f"dbdist builds 4 x hidden_size = {4 * width}")
    if config_json.get("layer_norm_eps", 1e-5) != 1e-5:
        raise UserError(f"{source} has layer_norm_eps={config_json['layer_norm_eps']}; dbdist builds 1e-05")
    return dataclasses.replace(
        text_encoder_config, vocab_size=config_json.get("vocab_size", 49408),
        max_length=config_json.get("max_position_embeddings", 77), width=width,
        num_layers=config_json["num_hidden_layers"], num_heads=config_json["num_attention_heads"],
        activation=_ACTIVATION[act])


def diffusers_config(model_config, transformers_version="4.25.1"):
    """transformers' CLIPTextConfig (text_encoder/config.json) for this tower, as SD 1.5's and 2.1's folders have it.

    SD 2.x's is OpenCLIP-H cut to the 23 blocks SD uses, with exact GELU (OpenCLIP's nn.GELU).
    """
    c = model_config.text_encoder
    return {
        "architectures": ["CLIPTextModel"],
        "attention_dropout": 0.0,
        "bos_token_id": 0,
        "dropout": 0.0,
        "eos_token_id": 2,
        "hidden_act": _HIDDEN_ACT[c.activation],
        "hidden_size": c.width,
        "initializer_factor": 1.0,
        "initializer_range": 0.02,
        "intermediate_size": 4 * c.width,
        "layer_norm_eps": 1e-5,
        "max_position_embeddings": c.max_length,
        "model_type": "clip_text_model",
        "num_attention_heads": c.num_heads,
        "num_hidden_layers": c.num_layers,
        "pad_token_id": 1,
        "projection_dim": 768 if c.activation == "quick_gelu" else 512,  # unused by CLIPTextModel
        "torch_dtype": "float32",
        "transformers_version": transformers_version,
        "vocab_size": c.vocab_size,
    }

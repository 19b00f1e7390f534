"""A single `.safetensors` checkpoint: the original Stable Diffusion layout, or one diffusers component.

The original layout holds every network under its own prefix: `model.diffusion_model.` (UNet),
`first_stage_model.` (VAE), `cond_stage_model.` (text encoder); SD 1.x and 2.x alike, fp32, fp16
or bf16 (cast to the variable's dtype). A file with a diffusers component's keys (such as
`unet/diffusion_pytorch_model.safetensors` copied out alone) also loads, for that network.
"""

from absl import logging

from dbdist.formats import networks, safetensors_io


def _layout(file_keys, network, model, model_config):
    """'original' if any of the network's original-layout keys is in the file, else 'diffusers' if any of
    its diffusers keys is, else 'original' (whose missing key the error then names)."""
    for layout in ("original", "diffusers"):
        if any(k.key in file_keys for k in networks.key_map(network, model, model_config, layout)):
            return layout
    return "original"


def load(model, network, model_config, path):
    """Loads `network` from the .safetensors file `path` (local or gs://)."""
    with safetensors_io.open_tensors(path) as (file_keys, get):
        layout = _layout(file_keys, network, model, model_config)
        if layout == "original":
            # Only this network's part of the file: its keys share the first name of its key map's.
            roots = {k.key.split(".", 1)[0] for k in networks.key_map(network, model, model_config, layout)}
            wanted = [key for key in file_keys if key.split(".", 1)[0] in roots]
        else:
            wanted = list(file_keys)
        logging.info("%s: loading %s (%s layout)", network, path, layout)
        tensors = {key: get(key) for key in wanted}
    networks.load_tensors(model, network, model_config, layout, tensors, path)

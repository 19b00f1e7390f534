"""Weight files other tools write and read: diffusers folders and single-file `.safetensors`.

Each network has a key map (`unet_keys`, `vae_keys`, `text_encoder_keys`):
`key_map(model, model_config, layout)` -> [TensorKey, ...] pairs every variable of
a built dbdist network with its tensor in a file of `layout`, "diffusers" (keys as in
the component's own file, e.g. `unet/diffusion_pytorch_model.safetensors`) or
"original" (the single-file Stable Diffusion checkpoint, full keys such as
`model.diffusion_model.input_blocks.1.0.in_layers.2.weight`). The containers
(`diffusers_folder`, `single_file`) only move tensors through those maps.
"""

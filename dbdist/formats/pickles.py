"""PyTorch pickles (.ckpt, .pt, .pth, .bin) are refused: loading one runs whatever code it holds."""

from dbdist.errors import UserError

PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin", ".pkl")


def is_pickle(path):
    return str(path).lower().endswith(PICKLE_SUFFIXES)


def refuse(path):
    raise UserError(
        f"{path}: a pickled PyTorch checkpoint; dbdist does not open pickles, since unpickling executes "
        "whatever code the file holds (torch.load runs it). Use the same weights as .safetensors: a single-file "
        "checkpoint (model.safetensors) or a diffusers folder with .safetensors components both load")

"""Read and write weights in keras-cv's `.h5` layout.

keras-cv publishes Stable Diffusion weights as Keras' legacy HDF5 weight files:
the root attribute `layer_names` lists the model's layers in order; each
layer's group lists its variables in `weight_names` (trainable first, then
non-trainable). Keras matches them to a model by POSITION, not by name, among
the layers that have weights. We do the same, and we write files keras-cv's
`model.load_weights("x.h5")` reads.

Position alone accepts a permuted file wherever shapes agree (two attention
blocks, a norm's gamma and beta), so before assigning anything we also check
what the names in the file do say. The numbers differ between files (Keras
numbers layers per process: `res_block_7`) and the class names between
keras-cv and us (its `padded_conv2d` is our `conv2d`), but in every file:
- each variable's last name (`kernel`, `bias`, `gamma`, `beta`, `embeddings`)
  is the model variable's at that position;
- Keras names a layer `<kind>_<n>` with n counting up as layers are created, and
  keras-cv's networks (and ours) list them in creation order: the numbers of one
  kind increase through the file;
- one kind in the file is one kind in the model, position by position.

Only h5py and numpy: this runs under any Keras backend.
"""

import dataclasses
import os
import re
import tempfile

import h5py
import keras
import numpy as np

from dbdist.lora.adapters import ADAPTER_VARIABLE_NAMES
from dbdist.weights import remote_files


def _layers_with_weights(model):
    return [layer for layer in model.layers if _ordered_weights(layer)]


def _ordered_weights(layer):
    # Keras' legacy order, which keras-cv's files were written in. LoRA adapters are not part
    # of the network's file: a merged network's kernels already hold them (dbdist/lora/).
    return [w for w in layer.trainable_weights + layer.non_trainable_weights if w.name not in ADAPTER_VARIABLE_NAMES]


def _decode(values):
    return [v.decode("utf8") if isinstance(v, bytes) else str(v) for v in values]


def _read_attribute_list(group, name):
    # Long lists are split by Keras into name0, name1, ... to fit HDF5's attribute size limit.
    if name in group.attrs:
        return _decode(group.attrs[name])
    values, chunk = [], 0
    while f"{name}{chunk}" in group.attrs:
        values.extend(_decode(group.attrs[f"{name}{chunk}"]))
        chunk += 1
    return values


@dataclasses.dataclass(frozen=True)
class FileLayer:
    """One layer group of the file: its name, its variables' names and arrays, in file order."""

    name: str
    weight_names: tuple
    arrays: tuple


def read_layers(path):
    """[FileLayer, ...] for the layers that have weights, in file order."""
    with remote_files.local_copy(path) as local_path:
        try:
            f = h5py.File(local_path, "r")
        except OSError as err:
            raise ValueError(f"{path}: not a readable HDF5 weights file ({err})") from err
        with f:
            if "layer_names" not in f.attrs and "layer_names0" not in f.attrs:
                raise ValueError(
                    f"{path}: no 'layer_names' attribute; expected a keras-cv/Keras legacy .h5 weights file "
                    "(written by model.save_weights('x.h5') in Keras 2, or by dbdist)"
                )
            layers = []
            for name in _read_attribute_list(f, "layer_names"):
                group = f[name]
                weight_names = _read_attribute_list(group, "weight_names")
                if weight_names:
                    layers.append(FileLayer(name, tuple(weight_names), tuple(np.asarray(group[w]) for w in weight_names)))
            return layers


def read_layer_arrays(path):
    """[(layer name, [arrays...]), ...] for the layers that have weights, in file order."""
    return [(layer.name, list(layer.arrays)) for layer in read_layers(path)]


def _kind_and_number(layer_name):
    """('res_block', 7) for 'res_block_7'; ('conv2d', 0) for Keras' first, unnumbered 'conv2d'."""
    kind, number = re.fullmatch(r"(.+?)(?:_(\d+))?", layer_name).groups()
    return kind, int(number or 0)


def _variable_name(weight_name):
    """'gamma' for 'res_block/group_normalization/gamma' (Keras 3) or '.../gamma:0' (Keras 2)."""
    return weight_name.split("/")[-1].split(":")[0]


class _LayoutCheck:
    """Checks file layers against model layers position by position, raising at the first disagreement."""

    def __init__(self, path, model):
        self.path, self.model = path, model
        self.kind_in_model, self.kind_in_file = {}, {}  # file kind -> model kind, and back
        self.last_of_kind = {}  # file kind -> (index, name) of its last layer so far

    def _fail(self, index, file_layer, model_layer, problem):
        raise ValueError(
            f"{self.path}: layer #{index} ('{file_layer.name}' in the file, '{model_layer.name}' in model "
            f"'{self.model.name}'): {problem}; the file's layers are not in this network's order (a permuted "
            "or re-ordered file, or one for another network), and Keras loads by position, so it is refused"
        )

    def layer(self, index, file_layer, model_layer):
        """Numbering, kind and variable names of one layer."""
        self._numbering(index, file_layer, model_layer)
        self._kind(index, file_layer, model_layer)
        self._variables(index, file_layer, model_layer)

    def _numbering(self, index, file_layer, model_layer):
        kind, number = _kind_and_number(file_layer.name)
        previous = self.last_of_kind.get(kind)
        if previous and _kind_and_number(previous[1])[1] >= number:
            self._fail(index, file_layer, model_layer,
                       f"it comes after '{previous[1]}' (#{previous[0]}), though Keras numbered it earlier")
        self.last_of_kind[kind] = (index, file_layer.name)

    def _kind(self, index, file_layer, model_layer):
        kind, model_kind = _kind_and_number(file_layer.name)[0], _kind_and_number(model_layer.name)[0]
        for mapping, key, value, side in ((self.kind_in_model, kind, model_kind, "file's"),
                                          (self.kind_in_file, model_kind, kind, "model's")):
            if mapping.setdefault(key, value) != value:
                self._fail(index, file_layer, model_layer,
                           f"the {side} earlier '{key}' layers matched '{mapping[key]}' layers, this one a '{value}'")

    def _variables(self, index, file_layer, model_layer):
        variables = _ordered_weights(model_layer)
        if len(file_layer.arrays) != len(variables):
            self._fail(index, file_layer, model_layer,
                       f"it has {len(file_layer.arrays)} arrays; the model expects {len(variables)}")
        found = [_variable_name(w) for w in file_layer.weight_names]
        expected = [_variable_name(v.path) for v in variables]
        if found != expected:
            self._fail(index, file_layer, model_layer, f"its variables are {found}; the model expects {expected}")

    def shapes(self, index, file_layer, model_layer):
        for array, variable in zip(file_layer.arrays, _ordered_weights(model_layer)):
            if tuple(array.shape) != tuple(variable.shape):
                raise ValueError(
                    f"{self.path}: layer #{index} ('{file_layer.name}' in the file, '{model_layer.name}' in the "
                    f"model): variable {variable.path} expects shape {tuple(variable.shape)}, the file has "
                    f"{tuple(array.shape)}; is this the file for preset and network '{self.model.name}'?"
                )


def check_layout(path, file_layers, model):
    """Raises ValueError naming the first layer where `file_layers` cannot be `model`'s by position."""
    model_layers = _layers_with_weights(model)
    if len(file_layers) != len(model_layers):
        raise ValueError(
            f"{path}: has {len(file_layers)} layers with weights, but model '{model.name}' "
            f"({model.count_params():,} parameters) expects {len(model_layers)}; "
            "is this the file for this network and preset?"
        )
    check = _LayoutCheck(path, model)
    pairs = list(enumerate(zip(file_layers, model_layers)))
    # Shapes last: a file for another preset has this network's names but other sizes,
    # and the shape is what tells its user so.
    for index, (file_layer, model_layer) in pairs:
        check.layer(index, file_layer, model_layer)
    for index, (file_layer, model_layer) in pairs:
        check.shapes(index, file_layer, model_layer)


def load_keras_cv_h5(model, path):
    """Loads a keras-cv layout `.h5` file (local or gs://) into `model`, checking names and shapes."""
    file_layers = read_layers(path)
    check_layout(path, file_layers, model)
    # Assign only once every layer has been checked: a bad file leaves the model untouched.
    for file_layer, layer in zip(file_layers, _layers_with_weights(model)):
        for array, variable in zip(file_layer.arrays, _ordered_weights(layer)):
            variable.assign(array.astype(variable.dtype))


def save_keras_cv_h5(model, path):
    """Writes `model`'s weights (local or gs://) so keras-cv's `load_weights(path)` reads them.

    Written to a temporary file first and moved into place whole.
    """
    layers = model.layers
    fd, tmp = tempfile.mkstemp(suffix=".h5")
    os.close(fd)
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs["layer_names"] = [layer.name.encode("utf8") for layer in layers]
            f.attrs["backend"] = b"tensorflow"
            f.attrs["keras_version"] = keras.__version__.encode("utf8")
            for layer in layers:
                group = f.create_group(layer.name)
                variables = _ordered_weights(layer)
                names = [v.path.encode("utf8") for v in variables]
                group.attrs["weight_names"] = names
                for name, variable in zip(names, variables):
                    group.create_dataset(name, data=keras.ops.convert_to_numpy(variable))
        remote_files.move_into_place(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

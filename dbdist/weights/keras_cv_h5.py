"""Read and write weights in keras-cv's `.h5` layout.

keras-cv publishes Stable Diffusion weights as Keras' legacy HDF5 weight files:
the root attribute `layer_names` lists the model's layers in order; each
layer's group lists its variables in `weight_names` (trainable first, then
non-trainable). Keras matches them to a model by POSITION, not by name, among
the layers that have weights. We do the same, with errors that say which
layer and which variable disagree, and we write files keras-cv's
`model.load_weights("x.h5")` reads.

Only h5py and numpy: this runs under any Keras backend.
"""

import os
import tempfile

import h5py
import keras
import numpy as np

from dbdist.weights import remote_files


def _layers_with_weights(model):
    return [layer for layer in model.layers if _ordered_weights(layer)]


def _ordered_weights(layer):
    # Keras' legacy order, which keras-cv's files were written in.
    return layer.trainable_weights + layer.non_trainable_weights


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


def read_layer_arrays(path):
    """[(layer name, [arrays...]), ...] for the layers that have weights, in file order."""
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
                    layers.append((name, [np.asarray(group[w]) for w in weight_names]))
            return layers


def load_keras_cv_h5(model, path):
    """Loads a keras-cv layout `.h5` file (local or gs://) into `model`, checking every shape."""
    file_layers = read_layer_arrays(path)
    model_layers = _layers_with_weights(model)
    if len(file_layers) != len(model_layers):
        raise ValueError(
            f"{path}: has {len(file_layers)} layers with weights, but model '{model.name}' "
            f"({model.count_params():,} parameters) expects {len(model_layers)}; "
            "is this the file for this network and preset?"
        )
    assignments = []
    for index, ((file_name, arrays), layer) in enumerate(zip(file_layers, model_layers)):
        variables = _ordered_weights(layer)
        if len(arrays) != len(variables):
            raise ValueError(
                f"{path}: layer #{index} ('{file_name}' in the file, '{layer.name}' in the model) has "
                f"{len(arrays)} arrays; the model expects {len(variables)}"
            )
        for array, variable in zip(arrays, variables):
            if tuple(array.shape) != tuple(variable.shape):
                raise ValueError(
                    f"{path}: layer #{index} ('{file_name}' in the file, '{layer.name}' in the model): "
                    f"variable {variable.path} expects shape {tuple(variable.shape)}, "
                    f"the file has {tuple(array.shape)}; is this the file for preset and network "
                    f"'{model.name}'?"
                )
            assignments.append((variable, array))
    # Assign only once every shape has been checked: a bad file leaves the model untouched.
    for variable, array in assignments:
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

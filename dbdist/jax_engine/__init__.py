"""The JAX engine: the same DreamBooth training on Keras 3's JAX backend (sibling of dbdist/training/).

Engine-specific, each in its own module: the devices and mesh (mesh.py), AdamW (optimizer.py),
the jitted step (step.py), orbax checkpoints (checkpoints.py), and the calls train.py makes
(engine.py). mesh, optimizer and step import no TensorFlow: they run on a machine without it.
"""

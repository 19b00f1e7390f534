"""Cloud launchers for dbdist: the same training commands on a TPU VM or as a Vertex AI job.

`python -m launch.tpu_vm` and `python -m launch.vertex_ai` turn a dbdist command line into
the gcloud calls / CustomJob an experienced Google Cloud user would make, after checking every
flag locally. They hold no training logic; see launch/README.md.
"""

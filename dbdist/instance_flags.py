"""--instance_dir, the subject's photos: make_tfrecords reads them into records; evaluate --judge=paper
compares the drawn images with them. Apart from common_flags, which train adopts whole: train has no use for it."""

from absl import flags

INSTANCE_DIR = flags.DEFINE_string("instance_dir", None, "Folder of the subject's photos (jpg/png/webp/bmp, optional "
                                   ".txt captions), local or gs://.")

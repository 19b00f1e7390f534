"""The dbdist command lines a launcher runs remotely: the user's flags plus where the run is placed.

Both launchers build their commands here, so a TPU VM and a Vertex AI job run the same thing:

    python -m dbdist.train  STRATEGY-FLAGS  <everything after -- , unchanged>
    python -m launch.stages <--make_tfrecords flags>  --  <the train command's flags>   (with --make_tfrecords)

Everything is checked locally before anything is created or submitted: the flags (asked of dbdist
itself, see command_flags.py), the strategy against the machines, the global batch against the
replicas, and every path the remote machines must read or write (gs:// only: they cannot see
this computer's disk, and a preempted TPU VM loses its own).
"""

import dataclasses
import re
import shlex

from absl import app

from launch.command_flags import parse_command_args

# Flags of the dbdist commands that name files or folders; each given one must be on gs://.
PATH_FLAGS = ("data_dir", "output_dir", "weights", "vocab_path", "unet_weights", "instance_dir", "class_dir",
              "concepts_file")
_GCS_URI = re.compile(r"gs://[a-z0-9][a-z0-9._-]{1,220}[a-z0-9](/.*)?")


def given_where(command_args):
    """Where the user wrote this command's flags: after `--` (train) or in --make_tfrecords."""
    return "in --make_tfrecords" if command_args.command == "make_tfrecords" else "after -- for dbdist.train"


def check_gcs_uri(value, flag, why):
    """`value` must be gs://BUCKET[/PATH]; the error says which flag and why it has to be."""
    if not _GCS_URI.fullmatch(value or ""):
        raise app.UsageError(f"{flag}={value!r} must be a gs://BUCKET/PATH Cloud Storage URI (bucket names: 3-222 "
                             f"lowercase letters, digits, dots, dashes, underscores): {why}")


@dataclasses.dataclass(frozen=True)
class Placement:
    """How dbdist runs on the launcher's machines."""

    platform: str  # named in errors: "the TPU VM db (v4-8, one host)", "Vertex AI (2 x a2-highgpu-1g ...)"
    strategy: str  # added when the user gives no --strategy
    allowed: tuple  # strategies that work on these machines
    replicas: int  # num_replicas_in_sync under `strategy`
    tpu: str = ""  # --tpu with --strategy=tpu
    also: tuple = ()  # (flag name, argument) pairs the placement needs too, e.g. ("jax_distributed", "--jax_distributed")

    def flags_for(self, command_args):
        """The placement flags the user did not give, for a command that knows them."""
        out = []
        if "strategy" not in command_args.given:
            out.append(f"--strategy={self.strategy}")
        if self.tpu and "tpu" not in command_args.given:
            out.append(f"--tpu={self.tpu}")
        out += [argument for name, argument in self.also if name not in command_args.given]
        return out

    def check(self, command_args):
        strategy = command_args.value("strategy") if "strategy" in command_args.given else self.strategy
        where = f"--strategy={strategy} ({given_where(command_args)})"
        if strategy not in self.allowed:
            raise app.UsageError(f"{where} does not run on {self.platform}: use "
                                 f"{' or '.join('--strategy=' + s for s in self.allowed)}, or leave --strategy out")
        if strategy == "tpu" and "tpu" in command_args.given and command_args.value("tpu") != self.tpu:
            raise app.UsageError(f"--tpu={command_args.value('tpu')} ({given_where(command_args)}) "
                                 f"does not fit {self.platform}, which needs --tpu={self.tpu}; leave --tpu out")
        return 1 if strategy == "one_device" else self.replicas


@dataclasses.dataclass(frozen=True)
class DbdistRun:
    """The remote command lines, as argv after the Python interpreter."""

    train_args: tuple
    records_args: tuple = ()  # empty: no make_tfrecords stage

    def module_argv(self):
        if self.records_args:
            return ["-m", "launch.stages", *self.records_args, "--", *self.train_args]
        return ["-m", "dbdist.train", *self.train_args]


def _check_paths(command_args, platform):
    for name in PATH_FLAGS:
        value = command_args.given.get(name)
        if value:
            check_gcs_uri(value, f"--{name} ({given_where(command_args)})",
                          f"{platform} cannot read this computer's files; copy them with `gcloud storage cp -r`")


def _check_divisible(command_args, flag, replicas, platform):
    value = command_args.value(flag)
    if value % replicas:
        raise app.UsageError(f"--{flag}={value} ({given_where(command_args)}"
                             f"{'' if flag in command_args.given else ', its default'}) is not divisible by the "
                             f"{replicas} replicas of {platform}; use a multiple of {replicas}")


def _draws_class_images(records):
    return records.value("num_class_images") or records.value("concepts_file")


def dbdist_run(placement, train_args, make_tfrecords="", default_records_dir="", require_output_dir=True):
    """Checks the user's flags for `placement` and returns the commands to run remotely.

    `make_tfrecords`: the --make_tfrecords flags as one shell-quoted string ("" for none).
    `default_records_dir`: where records go when neither command names the folder ("" to require it).
    """
    train = parse_command_args("train", train_args)
    records = parse_command_args("make_tfrecords", shlex.split(make_tfrecords)) if make_tfrecords.strip() else None
    train_replicas = placement.check(train)
    _check_divisible(train, "global_batch_size", train_replicas, placement.platform)
    extra_train, extra_records = [], []
    if records is not None:
        # The records folder joins the two commands: make_tfrecords' --output_dir is train's --data_dir.
        given = {records.given.get("output_dir"), train.given.get("data_dir")} - {None, ""}
        if len(given) > 1:
            raise app.UsageError(f"--output_dir={records.given['output_dir']} in --make_tfrecords and "
                                 f"--data_dir={train.given['data_dir']} after -- must be the same folder (or give one)")
        folder = given.pop() if given else default_records_dir
        if not folder:
            raise app.UsageError("where do the records go? give --output_dir=gs://... in --make_tfrecords "
                                 "(or --data_dir=gs://... after --)")
        check_gcs_uri(folder, "the records folder", f"{placement.platform} writes and reads it")
        if "output_dir" not in records.given:
            extra_records.append(f"--output_dir={folder}")
        if "data_dir" not in train.given:
            extra_train.append(f"--data_dir={folder}")
        record_replicas = placement.check(records)
        if _draws_class_images(records):
            _check_divisible(records, "class_batch_size", record_replicas, placement.platform)
        _check_paths(records, placement.platform)
    elif not train.given.get("data_dir"):
        raise app.UsageError("--data_dir=gs://... is required after -- (records from `python -m dbdist.make_tfrecords`), "
                             "or pass --make_tfrecords='...' to make them first")
    if require_output_dir and not train.given.get("output_dir"):
        raise app.UsageError(f"--output_dir=gs://BUCKET/RUN is required after --: checkpoints and exports must outlive "
                             f"{placement.platform}")
    _check_paths(train, placement.platform)
    return DbdistRun(
        train_args=(*placement.flags_for(train), *train.args, *extra_train),
        records_args=(*placement.flags_for(records), *records.args, *extra_records) if records else (),
    )

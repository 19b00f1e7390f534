"""What a dbdist command accepts after `--`, asked of the command itself.

The commands share one absl registry that several people extend, so the launchers keep no copy
of their flags. A fresh interpreter imports `dbdist.<command>` and nothing else (as
`python -m dbdist.<command>` would on the VM or in the container), and reports each flag's name,
type, default and choices; the launcher then parses the arguments with an absl registry rebuilt
from that report. An unknown flag, a bad enum value or "abc" for an integer is refused here,
before anything is created or submitted, with absl's own message.

Run as a module it prints that report: `python -m launch.command_flags train`.
"""

import dataclasses
import functools
import importlib
import json
import os
import pathlib
import subprocess
import sys

from absl import app, flags

COMMANDS = ("train", "make_tfrecords")
_REPORT_MARK = "DBDIST_FLAG_SCHEMA "
_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass(frozen=True)
class CommandArgs:
    """The arguments given to one dbdist command, as given and as absl reads them."""

    command: str
    args: tuple  # passed on unchanged
    given: dict  # flag name -> value, for each flag on the command line
    defaults: dict  # flag name -> default, for every flag the command knows

    def value(self, name):
        return self.given.get(name, self.defaults.get(name))

    def knows(self, name):
        return name in self.defaults


@functools.lru_cache(maxsize=None)
def flag_schema(command):
    """{flag name: {kind, default, ...}} of `python -m dbdist.<command>`, from a fresh interpreter."""
    if command not in COMMANDS:
        raise ValueError(f"command must be one of {COMMANDS}, got {command!r}")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([sys.executable, "-m", "launch.command_flags", command], env=env,
                            capture_output=True, text=True, timeout=300)
    for line in result.stdout.splitlines():
        if line.startswith(_REPORT_MARK):
            return json.loads(line[len(_REPORT_MARK):])
    raise RuntimeError(f"could not list the flags of dbdist.{command} (is dbdist importable here?):\n{result.stderr[-2000:]}")


def _registry(schema):
    """A private absl registry with the same flags, so parsing follows absl's rules exactly."""
    registry = flags.FlagValues()
    for name, spec in schema.items():
        kind, default = spec["kind"], spec["default"]
        if kind == "bool":
            flags.DEFINE_bool(name, default, "", flag_values=registry)
        elif kind == "enum":
            flags.DEFINE_enum(name, default, spec["choices"], "", flag_values=registry)
        elif kind == "int":
            flags.DEFINE_integer(name, default, "", lower_bound=spec.get("lower"), upper_bound=spec.get("upper"),
                                 flag_values=registry)
        elif kind == "float":
            flags.DEFINE_float(name, default, "", flag_values=registry)
        elif kind == "list":
            flags.DEFINE_list(name, default, "", flag_values=registry)
        elif kind == "multi":
            flags.DEFINE_multi_string(name, default, "", flag_values=registry)
        else:
            flags.DEFINE_string(name, None if default is None else str(default), "", flag_values=registry)
    return registry


def parse_command_args(command, args):
    """Parses `args` as `python -m dbdist.<command> ARGS` would; absl.app.UsageError names what is wrong."""
    args = tuple(args)
    where = f"the flags after -- go to dbdist.{command}"
    if any(a == "--flagfile" or a.startswith("--flagfile=") for a in args):
        raise app.UsageError(f"{where}: --flagfile cannot be used there (the file is not on the machine that runs it); "
                             "give the flags themselves")
    schema = flag_schema(command)
    registry = _registry(schema)
    try:
        rest = registry([f"dbdist.{command}", *args])
    except flags.Error as err:
        raise app.UsageError(f"{where}, which refuses them: {err}") from None
    if rest[1:]:
        raise app.UsageError(f"{where}, which takes flags only (--name=value); got {rest[1:]}")
    given = {name: registry[name].value for name in schema if registry[name].present}
    return CommandArgs(command, args, given, {name: spec["default"] for name, spec in schema.items()})


def _describe(flag):
    parser = flag.parser
    spec = {"default": flag.default}
    if isinstance(flag, flags.BooleanFlag):
        spec["kind"] = "bool"
    elif isinstance(flag, flags.MultiFlag):
        spec["kind"] = "multi"
    elif isinstance(parser, flags.EnumParser):
        spec.update(kind="enum", choices=list(parser.enum_values))
    elif isinstance(parser, flags.IntegerParser):
        spec.update(kind="int", lower=parser.lower_bound, upper=parser.upper_bound)
    elif isinstance(parser, flags.FloatParser):
        spec["kind"] = "float"
    elif isinstance(parser, flags.ListParser):
        spec["kind"] = "list"
    else:
        spec["kind"] = "string"
    return spec


def _report(command):
    importlib.import_module(f"dbdist.{command}")  # defines its flags (and those of what it imports)
    schema = {name: _describe(flags.FLAGS[name]) for name in flags.FLAGS}
    print(_REPORT_MARK + json.dumps(schema, default=str), flush=True)


if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in COMMANDS:
        sys.exit(f"usage: python -m launch.command_flags {{{'|'.join(COMMANDS)}}}")
    _report(sys.argv[1])

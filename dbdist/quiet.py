"""Hides TensorFlow's C++ logs unless `--verbosity` (`-v`) asks for them.

Each command imports this module first, before anything that imports TensorFlow: absl parses
--verbosity only after the command's imports, so it is read here from sys.argv.

- After import, TensorFlow's C++ logs obey TF_CPP_MIN_LOG_LEVEL (on a machine without a GPU,
  `failed call to cuInit` is one, at ERROR level): it defaults to 3 here, or 0 from
  --verbosity=1 (absl's debug level) up. A value the user exported is never changed.
- While TensorFlow 2.21 is being imported, its libraries log through absl before absl's
  logging is initialised, and those lines (oneDNN, CPU instructions, cuda drivers) ignore
  TF_CPP_MIN_LOG_LEVEL. So TensorFlow is imported here with stderr (the file descriptor,
  which the C++ code writes to) sent to a temporary file, and only the lines at or above the
  level are written back; everything that is not a TensorFlow log line is kept.
- TensorFlow's Python logger shows INFO only when its C++ logs are shown.
"""

import logging
import os
import re
import sys
import tempfile

SHOW_TENSORFLOW_LOGS_FROM = 1  # absl's debug level
_VERBOSITY_FLAG_NAMES = ("v", "verbosity")
# A C++ log record: "I0000 00:00:1796016466.565024    7248 port.cc:153] ..."; lines that follow it
# without this prefix continue it.
_LOG_RECORD = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d\d")
_SEVERITY = {"I": 0, "W": 1, "E": 2, "F": 3}
_ABSL_PREAMBLE = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"


def requested_verbosity(argv):
    """The integer given to absl's --verbosity / -v in argv (as absl spells it), else None."""
    args = iter(argv[1:])
    for arg in args:
        if arg == "--":  # the rest is not ours (e.g. a launcher's command)
            break
        if not arg.startswith("-"):
            continue
        name, has_value, value = arg.lstrip("-").partition("=")
        if name not in _VERBOSITY_FLAG_NAMES:
            continue
        if not has_value:
            value = next(args, "")
        try:
            return int(value)
        except ValueError:
            return None  # absl names the bad value when it parses the flags


def tensorflow_log_environment(verbosity):
    """The environment defaults that show or hide TensorFlow's C++ logs for this verbosity."""
    show = verbosity is not None and verbosity >= SHOW_TENSORFLOW_LOGS_FROM
    return {"TF_CPP_MIN_LOG_LEVEL": "0" if show else "3"}


def set_tensorflow_log_defaults(argv, environ):
    for name, value in tensorflow_log_environment(requested_verbosity(argv)).items():
        environ.setdefault(name, value)


def min_log_level(environ):
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (0 = everything)."""
    try:
        return int(environ.get("TF_CPP_MIN_LOG_LEVEL", "0"))
    except ValueError:
        return 0


def lines_to_show(text, min_level):
    """What of `text` (stderr while TensorFlow was imported) to show: log records at or above
    `min_level` with their continuation lines, and anything that is not a TensorFlow log line."""
    shown, keep = [], True
    for line in text.splitlines(keepends=True):
        record = _LOG_RECORD.match(line)
        if record:
            keep = _SEVERITY[record.group(1)] >= min_level
        elif line.startswith(_ABSL_PREAMBLE):
            keep = min_level == 0
            if keep:
                shown.append(line)
            continue
        if keep:
            shown.append(line)
    return "".join(shown)


def import_tensorflow(min_level):
    """Imports TensorFlow, writing back only what `lines_to_show` keeps of its import-time stderr."""
    if min_level == 0 or "tensorflow" in sys.modules:
        import tensorflow  # noqa: F401
        return
    sys.stderr.flush()
    saved_stderr = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow  # noqa: F401
        finally:  # also when the import fails: its error lines still reach the user
            sys.stderr.flush()
            os.dup2(saved_stderr, 2)
            os.close(saved_stderr)
            captured.seek(0)
            sys.stderr.write(lines_to_show(captured.read().decode("utf-8", "replace"), min_level))
            sys.stderr.flush()


def quiet_tensorflow_python_logs(min_level):
    """TensorFlow's Python side logs through the `tensorflow` logger (e.g. "Sharding callback
    duration" at every checkpoint); its INFO lines follow the C++ level."""
    if min_level >= 1:
        logging.getLogger("tensorflow").setLevel(logging.WARNING)


set_tensorflow_log_defaults(sys.argv, os.environ)
import_tensorflow(min_log_level(os.environ))
quiet_tensorflow_python_logs(min_log_level(os.environ))

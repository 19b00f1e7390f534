"""One exception for mistakes the user can fix, and the entry point that reports them in one line.

A bad flag value, a resume with other settings, a bad concepts file, a missing bucket: the user
needs the message, not a traceback through TensorFlow. Every command ends with
`errors.run(main)` instead of `app.run(main)`; it prints `<command>: error: <message>` on stderr
and exits with code 1. Any other exception is a defect and keeps its traceback.
"""

import sys

from absl import app, flags

EXIT_CODE = 1  # absl's own code for a flag it cannot parse


class UserError(ValueError):
    """A value or input the user gave that dbdist cannot use; the message names it and what was expected.

    A ValueError, so code (and tests) that catch ValueError still do.
    """


class MissingInputError(UserError, FileNotFoundError):
    """A file, folder or bucket the user named does not exist."""


def command_name():
    """`dbdist.train` when run as `python -m dbdist.train`, else the script's file name."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    return spec.name if spec is not None else sys.argv[0].rsplit("/", 1)[-1]


def report_and_exit(error):
    message = " ".join(str(error).split("\n"))  # one line, whatever the message's layout
    sys.stderr.write(f"{command_name()}: error: {message}\n")
    sys.exit(EXIT_CODE)


def _parse_flags(argv):
    """absl's parser, with a bad flag reported like any other user error (absl prints two lines)."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as error:
        report_and_exit(error)


def run(main):
    """app.run(main), with user errors reported as one line (see the module docstring)."""

    def main_reporting_user_errors(argv):
        try:
            return main(argv)
        except (UserError, app.UsageError) as error:
            report_and_exit(error)

    app.run(main_reporting_user_errors, flags_parser=_parse_flags)

"""Checks on absl flags that need neither TensorFlow nor dbdist's flag definitions (the launchers use them too)."""

from absl import app, flags


def require(*names):
    """absl's mark_flags_as_required is global; the commands share one flag registry (and tests run
    them in one process), so each command checks its own required flags."""
    missing = [name for name in names if flags.FLAGS[name].value in (None, "")]
    if missing:
        raise app.UsageError(f"missing required flag(s): {', '.join('--' + n for n in missing)}")

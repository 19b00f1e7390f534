"""PNG plots people look at: the loss curve."""

import io

import matplotlib

matplotlib.use("Agg")  # No display on training machines.
import matplotlib.pyplot as plt  # noqa: E402

from dbdist.data.writer import write_bytes_atomically  # noqa: E402


def plot_loss_curve(records, path):
    """Loss, instance loss and prior loss against step, written as a PNG (local or gs://)."""
    if not records:
        raise ValueError(f"no metrics to plot into {path}")
    steps = [r["step"] for r in records]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for key, style in (("loss", "-"), ("instance_loss", "--"), ("prior_loss", ":")):
        ax.plot(steps, [r[key] for r in records], style, label=key)
    ax.set_xlabel("step")
    ax.set_ylabel("MSE")
    ax.set_title("DreamBooth training loss")
    ax.legend()
    ax.grid(alpha=0.3)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", bbox_inches="tight")
    plt.close(fig)
    write_bytes_atomically(path, buffer.getvalue())

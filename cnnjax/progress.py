"""A progress bar for the epoch in progress, drawn on a terminal and in a notebook.

    epoch 3/30 [########------------] 17/42  loss 0.1234  acc 0.9650  85.0 step/s  2720 img/s
    ETA 0:00:12   (one line on the terminal)

In a Jupyter notebook (an IPython kernel) the same text is drawn by ``tqdm.auto``: a widget
where ipywidgets is installed, a line of text otherwise. When the stream is neither (a log
file, a pipe, a batch job) the bar does nothing at all: no output, no device
synchronisation, and the run prints its one line per log step as before.
"""

from __future__ import annotations

import datetime
import shutil
import sys
import time
from typing import Any, TextIO

import jax


def in_notebook() -> bool:
    """Whether this process is an IPython kernel (Jupyter, JupyterLab, VS Code, Colab)."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython and hasattr(ipython, "get_ipython") else None
    return shell is not None and hasattr(shell, "kernel")


class ProgressBar:
    """Per-epoch progress with running train loss/accuracy, throughput and time left.

    Args:
      total_steps: steps of the whole run.
      steps_per_epoch: steps of one epoch.
      batch_size: global batch size (for images/s).
      stream: where to draw (default ``sys.stdout``); the bar is active only if it is a TTY.
      min_interval_s: least time between redraws; each redraw waits for the device to
        finish the step it reports, so redrawing every step would slow training.
    """

    def __init__(
        self, total_steps: int, steps_per_epoch: int, batch_size: int,
        stream: TextIO | None = None, min_interval_s: float = 0.2,
    ):
        self.stream = stream or sys.stdout
        self.notebook = stream is None and in_notebook()
        self.active = self.notebook or bool(getattr(self.stream, "isatty", lambda: False)())
        self._tqdm: Any = None  # the notebook's bar, one per epoch
        self.total_steps, self.spe, self.batch_size = total_steps, steps_per_epoch, batch_size
        self.num_epochs = -(-total_steps // steps_per_epoch)
        self.min_interval_s = min_interval_s
        self._unread: list[dict[str, Any]] = []
        self._sums: dict[str, float] = {}
        self._count = 0
        self._epoch = -1
        self._drawn = False
        self._last_draw = 0.0
        self._rate_from: tuple[int, float] | None = None  # (step, time) the rate is measured from
        self._rate = 0.0

    def update(self, step: int, metrics: dict[str, Any]) -> None:
        """Reports that ``step`` steps are done; ``metrics``: that step's (device) metrics."""
        if not self.active:
            return
        epoch = (step - 1) // self.spe
        if epoch != self._epoch:
            self._epoch, self._sums, self._count, self._unread = epoch, {}, 0, []
        self._unread.append(metrics)
        now = time.time()
        if self._rate_from is None:  # the first step includes compilation: measure after it
            self._rate_from = (step, now)
            return
        if now - self._last_draw < self.min_interval_s and step % self.spe and (
            step != self.total_steps
        ):
            return
        for m in jax.device_get(self._unread):  # waits for the newest step: honest rates
            for k in ("loss", "accuracy"):
                if k in m:
                    self._sums[k] = self._sums.get(k, 0.0) + float(m[k])
            self._count += 1
        self._unread = []
        now = time.time()
        first_step, first_time = self._rate_from
        if step > first_step and now > first_time:
            self._rate = (step - first_step) / (now - first_time)
        if now - first_time > 10:  # a moving window: recent speed predicts the rest best
            self._rate_from = (step, now)
        self._last_draw = now
        self._draw(step)

    def line(self, step: int, columns: int = 100) -> str:
        """The bar's text, at most ``columns - 1`` wide (the bar itself shrinks first)."""
        in_epoch = step - self._epoch * self.spe
        epoch_len = min(self.spe, self.total_steps - self._epoch * self.spe)
        parts = [f"{in_epoch:>{len(str(epoch_len))}}/{epoch_len}", *self._stats(step)]
        head = f"epoch {self._epoch + 1}/{self.num_epochs}"
        for sep in ("  ", " "):  # narrow terminals: tighter spacing, then a shorter bar
            tail = sep.join(parts)
            width = min(20, columns - 1 - len(head) - len(tail) - 2 * len(sep) - 2)
            if width >= 5 or len(head) + len(sep) + len(tail) < columns:
                break
        if width >= 5:
            filled = int(width * in_epoch / max(epoch_len, 1))
            head += f"{sep}[{'#' * filled}{'-' * (width - filled)}]"
        return f"{head}{sep}{tail}"[: columns - 1]

    def _stats(self, step: int) -> list[str]:
        """The epoch's running loss and accuracy, the speed and the time left."""
        n, parts = max(self._count, 1), []
        if "loss" in self._sums:
            parts.append(f"loss {self._sums['loss'] / n:.4f}")
        if "accuracy" in self._sums:
            parts.append(f"acc {self._sums['accuracy'] / n:.4f}")
        if self._rate > 0:
            eta = datetime.timedelta(seconds=round((self.total_steps - step) / self._rate))
            parts += [f"{self._rate:.1f} step/s", f"{self._rate * self.batch_size:.0f} img/s",
                      f"ETA {eta}"]
        return parts

    def _draw(self, step: int) -> None:
        if self.notebook:
            return self._draw_tqdm(step)
        columns = shutil.get_terminal_size((100, 20)).columns
        self.stream.write("\r\x1b[K" + self.line(step, columns))
        self.stream.flush()
        self._drawn = True

    def _draw_tqdm(self, step: int) -> None:
        from tqdm.auto import tqdm

        epoch_len = min(self.spe, self.total_steps - self._epoch * self.spe)
        desc = f"epoch {self._epoch + 1}/{self.num_epochs}"
        if self._tqdm is None or self._tqdm.desc != desc:
            if self._tqdm is not None:
                self._tqdm.close()
            self._tqdm = tqdm(total=epoch_len, desc=desc, leave=False, unit="step",
                              file=self.stream)
        self._tqdm.n = step - self._epoch * self.spe
        self._tqdm.set_postfix_str("  ".join(self._stats(step)), refresh=False)
        self._tqdm.refresh()

    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\x1b[K")
            self._drawn = False

    def print(self, text: str) -> None:
        """Prints ``text`` as a line of its own (above the bar on a terminal)."""
        self._clear()
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        if self.active:
            self._clear()
            self.stream.flush()

"""Runs launch.py and sends this process a signal at a chosen moment, as a user's Ctrl-C would.

    python tests/interrupt.py --at=MOMENT --signal=INT|TERM[,INT|TERM...] -- <launch.py flags>

The signals are sent one after another, 0.2 s apart, from a helper thread, while the main
thread goes on into the moment (an import, a compile, a save). Moments:
  import    when ``jax`` starts being imported
  prepare   when the built-in digits dataset starts being prepared
  compile   0.1 s into the first call of the train step (its compilation)
  train     before the batch of step 3 is read
  eval      at the start of the first evaluation
  save      right after the asynchronous save of the first checkpoint has started (each
            commit is slowed by 1 s, so that a second signal lands inside one)
  plots     at the start of the final plots
  evaluate  at the start of ``--mode=eval``'s evaluation
"""

import os
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.faults import around, launch, nth, replace, send  # noqa: E402


class _OnImport:
    """A meta-path finder that fires once, when ``module`` starts being imported."""

    def __init__(self, module: str, action):
        self.module, self.action = module, action

    def find_spec(self, name, path=None, target=None):
        if name == self.module and self.action:
            action, self.action = self.action, None
            action()
        return None


def install(moment: str, signals: list[int]) -> None:
    fire = lambda *a, **k: send(signals)  # noqa: E731
    if moment == "import":
        # Sent from a thread once the import has begun: the main thread is inside it.
        sys.meta_path.insert(0, _OnImport("jax", fire))
        return
    from cnnjax import checkpoint, plot_data, run, steps, training
    from cnnjax.data import loader, sources

    if moment == "prepare":
        around(sources, "prepare_builtin", before=lambda name, data_dir: os.path.isdir(
            os.path.join(data_dir, name)) or fire())
    elif moment == "compile":
        def make_timed(make):
            def made(*a, **k):
                step = make(*a, **k)
                first = nth(1, lambda: send(signals, 0.1))

                def timed(*args):
                    first()
                    return step(*args)

                return timed

            return made

        replace(steps, "make_train_step", make_timed)
    elif moment == "train":
        around(loader.InMemoryLoader, "batch", before=lambda self, step: step == 3 and fire())
    elif moment == "eval":
        around(training.Job, "evaluate", before=nth(1, fire))
    elif moment == "save":
        # The signals arrive while the first checkpoint is written, and the commit that a
        # preemption waits for is slowed down, so that a second signal lands inside it.
        first = nth(1, fire)
        around(checkpoint.Checkpointer, "save",
               after=lambda self, *a, **k: self.directory.endswith("checkpoints") and first())
        around(checkpoint.Checkpointer, "wait", before=lambda self: time.sleep(1.0))
    elif moment == "plots":
        around(plot_data, "write_plots", before=fire)
    elif moment == "evaluate":
        around(run, "evaluation", before=fire)
    else:
        raise SystemExit(f"unknown moment {moment!r}")


def main() -> None:
    launch(lambda options: install(options["at"], [
        getattr(signal, f"SIG{n}") for n in options["signal"].split(",")]))


if __name__ == "__main__":
    main()

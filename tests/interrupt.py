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
import runpy
import signal
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def send(signals: list[int], delay: float = 0.0) -> None:
    """Sends ``signals`` from a helper thread, ``delay`` s from now and 0.2 s apart."""

    def run():
        time.sleep(delay)
        for i, s in enumerate(signals):
            if i:
                time.sleep(0.2)
            os.kill(os.getpid(), s)

    threading.Thread(target=run, daemon=True).start()


def before(owner, name: str, action) -> None:
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        action(*args, **kwargs)
        return original(*args, **kwargs)

    setattr(owner, name, wrapped)


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
    from cnnjax import checkpoint, evaluate, plot_data, steps, training
    from cnnjax.data import loader, sources

    if moment == "prepare":
        before(sources, "prepare_builtin", lambda name, data_dir: os.path.isdir(
            os.path.join(data_dir, name)) or fire())
    elif moment == "compile":
        make = steps.make_train_step

        def make_timed(*a, **k):
            step = make(*a, **k)
            calls = []

            def timed(*args):
                if not calls:
                    calls.append(1)
                    send(signals, 0.1)
                return step(*args)

            return timed

        training.steps.make_train_step = make_timed
    elif moment == "train":
        before(loader.InMemoryLoader, "batch", lambda self, step: step == 3 and fire())
    elif moment == "eval":
        calls = []
        before(training, "_eval", lambda *a, **k: calls.append(1) or len(calls) == 1 and fire())
    elif moment == "save":
        # The signals arrive while the first checkpoint is written, and the commit that a
        # preemption waits for is slowed down, so that a second signal lands inside it.
        started = []

        def save_started(self, step, *a, **k):
            if self.directory.endswith("checkpoints") and not started:
                started.append(step)
                send(signals)

        original_save, original_wait = checkpoint.Checkpointer.save, checkpoint.Checkpointer.wait

        def save(self, step, *a, **k):
            out = original_save(self, step, *a, **k)
            save_started(self, step)
            return out

        def wait(self):
            time.sleep(1.0)
            return original_wait(self)

        checkpoint.Checkpointer.save, checkpoint.Checkpointer.wait = save, wait
    elif moment == "plots":
        before(plot_data, "write_plots", fire)
    elif moment == "evaluate":
        before(evaluate, "evaluate", fire)
    else:
        raise SystemExit(f"unknown moment {moment!r}")


def main() -> None:
    args = sys.argv[1:]
    split = args.index("--")
    options = dict(a.lstrip("-").split("=", 1) for a in args[:split])
    names = options["signal"].split(",")
    sys.path.insert(0, ROOT)  # this checkout's cnnjax, whatever else is installed
    install(options["at"], [getattr(signal, f"SIG{n}") for n in names])
    sys.argv = [os.path.join(ROOT, "launch.py"), *args[split + 1:]]
    runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()

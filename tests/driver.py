"""Runs a tiny digits training in its own process, for tests that kill, signal or spread it.

    python tests/driver.py --workdir=W --data_dir=D [--kill=MOMENT] [--stop_at=N]
        [--coordinator=host:port --num_processes=2 --process_id=0]

``--kill`` SIGKILLs this process at a chosen moment, so a test can relaunch and check that
nothing was lost:
  step:N       before the batch of step N is read (N steps done, maybe not saved)
  save:N       right after the asynchronous save of step N has started (write in flight)
  committed:N  right after the checkpoint of step N is committed
  eval:K       during the K-th evaluation
  jsonl:K      half-way through writing the K-th metrics line
  restore      right after a checkpoint was restored
  term:N, int:N  send SIGTERM / SIGINT to itself before step N (preemption, not a kill)
  poison:N     make the params NaN before step N (exercises nan_policy)
"""

import argparse
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from tests.faults import around, die, nth, replace  # noqa: E402


def install_kill(moment: str) -> None:
    from cnnjax import checkpoint, data, metrics, training

    kind, _, arg = moment.partition(":")
    n = int(arg) if arg else 0

    if kind == "step":
        around(data.InMemoryLoader, "batch", before=lambda self, step: step == n and die())
    elif kind == "save":
        around(checkpoint.Checkpointer, "save", after=lambda self, step, *a: step == n and die())
    elif kind == "committed":
        def after_save(self, step, *a):
            if step == n:
                self.wait()
                die()
        around(checkpoint.Checkpointer, "save", after=after_save)
    elif kind == "eval":
        around(training.Job, "evaluate", before=nth(n, die))
    elif kind == "jsonl":
        def tear(self, step, values):  # a line cut short by the kill, as a torn append
            import json
            with open(self.path, "a") as f:
                f.write(json.dumps({"step": step, **values})[:20])
            die()

        around(metrics.JsonlWriter, "write_scalars", before=nth(n, tear))
    elif kind in ("term", "int"):
        sig = signal.SIGTERM if kind == "term" else signal.SIGINT
        around(data.InMemoryLoader, "batch",
               before=lambda self, step: step == n and os.kill(os.getpid(), sig))
    elif kind == "poison":
        import jax
        import jax.numpy as jnp

        def make_poisoned(make):
            def made(*a, **k):
                step_fn = make(*a, **k)

                def poisoned(state, batch):
                    if int(state.step) == n:
                        state = state.replace(
                            params=jax.tree.map(lambda p: p * jnp.nan, state.params))
                    return step_fn(state, batch)

                return poisoned

            return made

        replace(training.steps, "make_train_step", make_poisoned)
    elif kind == "restore":
        around(checkpoint.Checkpointer, "restore", after=lambda *a, **k: die())
    else:
        raise SystemExit(f"unknown --kill moment {moment!r}")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--workdir", required=True)
    p.add_argument("--data_dir", required=True)
    p.add_argument("--num_steps", type=int, default=24)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--stop_at", type=int)
    p.add_argument("--kill")
    p.add_argument("--coordinator")
    p.add_argument("--num_processes", type=int)
    p.add_argument("--process_id", type=int)
    p.add_argument("--nan_policy", default="stop")
    p.add_argument("--learning_rate", type=float, default=0.05)
    args = p.parse_args()
    from absl import logging

    logging.set_verbosity(logging.WARNING)  # as launch.py does: Orbax logs every save at INFO

    from cnnjax import parallel, training
    from cnnjax.errors import EXIT_NONFINITE, EXIT_PREEMPTED

    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    from tests.helpers import tiny_config

    config = tiny_config(
        args.data_dir, num_steps=args.num_steps, checkpoint_every_steps=5, keep_checkpoints=2,
        nan_policy=args.nan_policy,
    )
    config.data.batch_size = args.batch_size
    config.optimizer.learning_rate = args.learning_rate
    if args.kill:
        install_kill(args.kill)
    try:
        training.run(config, args.workdir, stop_at_step=args.stop_at)
    except training.Preempted as e:
        print(e, flush=True)
        sys.exit(EXIT_PREEMPTED)
    except training.NonFiniteError as e:
        print(f"error: {e}", flush=True)
        sys.exit(EXIT_NONFINITE)


if __name__ == "__main__":
    main()

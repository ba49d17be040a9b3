"""cnnjax: convolutional networks in JAX/Flax.

``cnnjax.get_config(name, **fields)``, ``cnnjax.train(config, workdir)`` and
``cnnjax.load(workdir, checkpoint="best")`` (with ``.predict(images)``, ``.evaluate()``,
``.model``, ``.variables``): see ``cnnjax.api``, whose examples run as tests. Importing
``cnnjax`` alone imports none of JAX (the three are resolved when first used), so that the
command line routes signals before anything slow.
"""

__all__ = ["get_config", "load", "train"]


def __getattr__(name: str):
    if name in __all__:
        from cnnjax import api

        return getattr(api, name)
    raise AttributeError(f"module 'cnnjax' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *__all__])

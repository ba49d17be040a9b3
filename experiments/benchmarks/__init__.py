"""Benchmarks and studies of cnnjax: training-step speed against PyTorch, the loaders, convolution
formulations, profile summaries. Run from the repository root, e.g.
``python -m experiments.benchmarks.benchmark --help``. Nothing in ``cnnjax/`` imports them."""

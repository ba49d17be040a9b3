"""cnnjax: convolutional networks in JAX/Flax."""

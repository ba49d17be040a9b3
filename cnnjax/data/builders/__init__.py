"""TFDS builders that ship with cnnjax (importing one registers it with TFDS)."""

"""The bottom layer: errors, the entry-point wrapper, atomic writes and output locks.

Nothing here imports the rest of metakd (the import contract in pyproject.toml checks it), so every
other layer can use it.
"""

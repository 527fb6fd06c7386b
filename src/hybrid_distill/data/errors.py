"""The data's own error: a problem with the images or the shards, said in one line with the fix."""


class DataError(ValueError):
    """A data problem, said in one line with the fix (exit code 2)."""

"""nnU-Net reads several settings from environment variables at the moment it needs them."""
import os
from contextlib import contextmanager


@contextmanager
def temporary_env(**values):
    """Set environment variables for the duration of a block (None: unset), then restore what was there."""
    old = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = str(v)
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v

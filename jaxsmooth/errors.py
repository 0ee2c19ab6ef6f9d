"""The one error type that user input raises, and the silencing of libraries' harmless warnings.

Every mistake a user can make (a config field, a data file, a checkpoint)
raises `UserError(field, message)`. The CLIs print it as one line,
``error: <field>: <message>``, and exit with status 2; library code never
prints it.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Iterator


class UserError(ValueError):
    """Bad user input, attributed to one field.

    Attributes:
        field: dotted name of what is wrong (``train.batch_size``, ``data.name``,
            ``checkpoint``).
        message: what is wrong and what is allowed.
    """

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@contextlib.contextmanager
def quiet_absl() -> Iterator[None]:
    """Silences absl warnings below ERROR (tfds and orbax probing files that may be absent) inside the block."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)

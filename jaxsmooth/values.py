"""Values users type that several programs take: one parser and one wording each, whoever takes them.

`radii` reads the radii of certify's grid mode (``--radii``, ``radii=``),
attack's accuracy mode, analyze's table columns and the reports' grids: the
same text gives the same radii, or the same error line, in every program.
The standard library only (analyze runs without JAX).
"""

from __future__ import annotations

import math
from typing import Sequence

from jaxsmooth.errors import UserError

EXAMPLE = "0.25,0.5"


def radii(given: str | Sequence[float], field: str = "radii") -> tuple[float, ...]:
    """The radii of `given` (text ``R1,R2,...`` or numbers), sorted and distinct, each a finite number >= 0.

    Raises a `UserError` on `field` for an empty list, an item that is not a number, or one that is not a radius.
    """
    items = given.split(",") if isinstance(given, str) else list(given)
    if not items or items == [""]:
        raise UserError(field, f"is empty; give radii >= 0 like {EXAMPLE}")
    values = []
    for item in items:
        try:
            value = float(item.strip() if isinstance(item, str) else item)
        except (TypeError, ValueError):
            raise UserError(field, f"{str(item).strip()!r} is not a number; give radii >= 0 like {EXAMPLE}") from None
        if not (math.isfinite(value) and value >= 0):
            raise UserError(field, f"{value:g} is not a radius; radii are finite numbers >= 0")
        values.append(value)
    return tuple(sorted(set(values)))

"""Numbers for people: every printed metric goes through :func:`num`.

A diverged run's loss is 1e131 and its relative gap 1e140 %; written with a fixed
number of decimals that is a line of 140 digits nobody can read. :func:`num` writes
plain digits where they are readable and scientific notation beyond.
"""

from __future__ import annotations

import math

# Plain digits in [SMALL, LARGE): below, leading zeros hide the digits; above, a reader
# has to count them. Beyond either end: scientific notation.
LARGE = 1e6
SMALL = 1e-4


def num(x: float, digits: int = 6, *, sign: bool = False) -> str:
    """``x`` with ``digits`` significant digits, trailing zeros dropped: ``0.012345``,
    ``123457``, ``2.2e+131``, ``3.1e-09``; ``nan``, ``inf``. ``sign``: always a sign."""
    x = float(x)
    plus = "+" if sign else ""
    if not math.isfinite(x) or x == 0.0:
        return f"{x:{plus}g}"
    if not SMALL <= abs(x) < LARGE:
        mantissa, exponent = f"{x:{plus}.{max(digits - 1, 0)}e}".split("e")
        return _trim(mantissa) + "e" + exponent
    decimals = max(digits - 1 - math.floor(math.log10(abs(x))), 0)
    return _trim(f"{x:{plus}.{decimals}f}")


def _trim(text: str) -> str:
    """Drop trailing zeros after a decimal point, and the point when nothing follows."""
    return text.rstrip("0").rstrip(".") if "." in text else text

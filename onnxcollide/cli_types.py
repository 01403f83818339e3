"""Click parameter types shared by the commands: numbers that must be finite, seeds."""

from __future__ import annotations

import math
from typing import Any

import click


class FiniteFloat(click.FloatRange):
    """A float in a range that is also finite: ``nan`` and ``inf`` are usage errors (exit 2).

    click's FloatRange lets ``nan`` through (every comparison with it is false) and ``inf``
    through an open upper end; neither is a tolerance or a scale.
    """

    name = "finite float"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> Any:
        """Parse, then reject non-finite values before the range check."""
        number = click.FLOAT.convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return super().convert(number, param, ctx)

    def _describe_range(self) -> str:
        """The range for --help; empty without bounds (click would print ``x<=None``)."""
        if self.min is None and self.max is None:
            return ""
        return super()._describe_range()


POSITIVE = FiniteFloat(min=0, min_open=True)
NON_NEGATIVE = FiniteFloat(min=0)
ANY_FINITE = FiniteFloat()
SEED = click.IntRange(min=0, max=2**63 - 1)  # numpy's default_rng takes non-negative seeds

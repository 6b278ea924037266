"""
Summaries of a metric over the measured rounds.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Summary:
    """
    The median, range and quartiles of one metric's per-round values.
    """

    median: float
    minimum: float
    maximum: float
    q1: float
    q3: float
    count: int

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        """
        Summarize C{values}; quartiles are interpolated between the values
        (C{statistics.quantiles} with the inclusive method), and equal the
        single value when there is only one.

        @raise ValueError: C{values} is empty.
        """
        if not values:
            raise ValueError("no values to summarize")
        if len(values) == 1:
            q1 = q3 = values[0]
        else:
            q1, _, q3 = statistics.quantiles(values, n=4, method="inclusive")
        return cls(
            median=statistics.median(values),
            minimum=min(values),
            maximum=max(values),
            q1=q1,
            q3=q3,
            count=len(values),
        )

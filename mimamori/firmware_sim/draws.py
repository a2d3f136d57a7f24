"""Random draws for the simulator: numpy's generator read in blocks (one call per draw is slow), as
plain Python floats. One ``Draws`` per household, from its seed, so a home's life is reproducible.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

import numpy as np

T = TypeVar("T")


class Draws:
    """Scalar draws from a numpy ``Generator``, taken in blocks.

    A scalar call on a Generator costs about a microsecond; a day plan needs ~100 draws and the
    evaluation simulates tens of thousands of household-days, so draws come from pre-drawn blocks.
    """

    __slots__ = ("_block", "_n", "_ni", "_u", "_ui", "rng")

    def __init__(self, rng: np.random.Generator, block: int = 1024) -> None:
        self.rng = rng
        self._block = block
        self._u: list[float] = []
        self._ui = block  # empty: the first call draws a block
        self._n: list[float] = []
        self._ni = 0

    def random(self) -> float:
        i = self._ui
        if i >= self._block:
            self._u = self.rng.random(self._block).tolist()
            i = 0
        self._ui = i + 1
        return self._u[i]

    def std_normal(self) -> float:
        if self._ni >= len(self._n):
            self._n = self.rng.standard_normal(self._block).tolist()
            self._ni = 0
        x = self._n[self._ni]
        self._ni += 1
        return x

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.random()

    def normal(self, mu: float, sd: float) -> float:
        return mu + sd * self.std_normal()

    def clipped_normal(self, mu: float, sd: float, lo: float, hi: float) -> float:
        return min(hi, max(lo, self.normal(mu, sd)))

    def exponential(self, mean: float) -> float:
        return -mean * math.log(1.0 - self.random())

    def chance(self, p: float) -> bool:
        return self.random() < p

    def poisson(self, lam: float) -> int:
        # Knuth's method: lam is small here (night bathroom visits, toilet trips).
        limit, k, prod = math.exp(-lam), 0, self.random()
        while prod > limit:
            k += 1
            prod *= self.random()
        return k

    def choice(self, options: Sequence[T]) -> T:
        return options[min(len(options) - 1, int(self.random() * len(options)))]

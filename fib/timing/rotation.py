"""Input rotation: consecutive calls never see the same input buffers."""
from __future__ import annotations

from typing import Callable


class Rotation:
    """`call` with the copy index advancing by one on every run, across warm-up and trials."""

    def __init__(self, call: Callable[[int], None], n_copies: int):
        self.call, self.n_copies, self.count = call, n_copies, 0

    def __call__(self) -> None:
        idx = self.count % self.n_copies
        self.count += 1
        self.call(idx)

"""Which pool images go to the human first."""

from __future__ import annotations

import numpy as np

SELECTIONS = ("random", "uncertainty")


def rank(names: list[str], method: str, rng: np.random.Generator, uncertainty: dict[str, float] | None = None
         ) -> list[str]:
    """``names`` in the order a human should see them."""
    if method == "random":
        return [names[i] for i in rng.permutation(len(names))]
    if method == "uncertainty":
        if uncertainty is None:
            raise ValueError("uncertainty ranking needs the model's uncertainty per image")
        return sorted(names, key=lambda n: (-uncertainty[n], n))
    raise ValueError(f"unknown selection {method!r}; choose from {', '.join(SELECTIONS)}")

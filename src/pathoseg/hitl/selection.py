"""Which pool images go to the human first."""

from __future__ import annotations

import numpy as np

SELECTIONS = ("random", "uncertainty")


def mean_entropy(probs: np.ndarray) -> float:
    """Mean binary entropy (bits) of a gland probability map."""
    p = np.clip(probs.astype(np.float64), 1e-6, 1 - 1e-6)
    return float(np.mean(-(p * np.log2(p) + (1 - p) * np.log2(1 - p))))


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

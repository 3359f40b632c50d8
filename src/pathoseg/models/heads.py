"""Output heads: what each output channel of the network means.

Every head starts with the gland channel (semantic gland-vs-background logit), so any model
can be used as a plain semantic segmenter. The instance heads add what separates touching
glands, learned from the instance ids of the training masks:

- ``contour``: a gland-boundary channel, as in DCAN (Chen et al., CVPR 2016): pixels on the
  rim of every gland, so the gap between two touching glands is marked even when it is
  thinner than a pixel of the gland mask.
- ``semantic``: the gland channel alone (checkpoints from before instance heads).

A head that lost its comparison is retired (:data:`RETIRED_HEADS`): asking for it, or
loading a checkpoint trained with it, is a one-line error that says why and what to use.
"""

from __future__ import annotations

from dataclasses import dataclass

from pathoseg.errors import PathosegError


@dataclass(frozen=True)
class Head:
    name: str
    channels: tuple[str, ...]
    description: str = ""

    @property
    def is_instance(self) -> bool:
        return len(self.channels) > 1


HEADS: dict[str, Head] = {
    h.name: h
    for h in (
        Head("semantic", ("gland",), "gland probability only; instances are its connected components"),
        Head("contour", ("gland", "contour"), "gland + gland-boundary channel (DCAN)"),
    )
}

# name -> why it went; its checkpoints no longer load (retrain with the default head)
RETIRED_HEADS: dict[str, str] = {
    "sdt": "the skeleton-aware distance head (SDT) was removed: it lost to the contour head on GlaS "
           "(object F1 0.795 vs 0.831 at native scale, docs/benchmarks.md §5); retrain with --head contour",
}

DEFAULT_HEAD = "contour"
LEGACY_HEAD = "semantic"  # what a checkpoint written before heads existed has


def get_head(name: str) -> Head:
    try:
        return HEADS[name]
    except KeyError:
        if name in RETIRED_HEADS:
            raise PathosegError(f"output head {name!r}: {RETIRED_HEADS[name]}") from None
        raise PathosegError(f"unknown output head {name!r}; choose from {', '.join(HEADS)}") from None

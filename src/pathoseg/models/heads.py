"""Output heads: what each output channel of the network means.

Every head starts with the gland channel (semantic gland-vs-background logit), so any model
can be used as a plain semantic segmenter. The instance heads add what separates touching
glands, learned from the instance ids of the training masks:

- ``contour``: a gland-boundary channel, as in DCAN (Chen et al., CVPR 2016): pixels on the
  rim of every gland, so the gap between two touching glands is marked even when it is
  thinner than a pixel of the gland mask.
- ``sdt``: a skeleton-aware distance transform, as in SDT (Wang et al., MICCAI 2023): 1 on
  each gland's skeleton, falling to 0 at its boundary, so elongated glands keep one ridge
  and two touching glands are two ridges with a valley between them.
- ``semantic``: the gland channel alone (checkpoints from before instance heads).
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
        Head("sdt", ("gland", "sdt"), "gland + skeleton-aware distance transform (SDT)"),
    )
}

DEFAULT_HEAD = "contour"
LEGACY_HEAD = "semantic"  # what a checkpoint written before heads existed has


def get_head(name: str) -> Head:
    try:
        return HEADS[name]
    except KeyError:
        raise PathosegError(f"unknown output head {name!r}; choose from {', '.join(HEADS)}") from None

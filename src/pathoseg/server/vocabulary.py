"""Limits and vocabularies of the app, defined once: the API checks them and serves them to the
editor (``GET /api/vocabulary``), so the browser copies none of them."""

from __future__ import annotations

import re

from pathoseg.data.targets import IGNORE
from pathoseg.operations import EDITOR_OPERATIONS

# Names Windows keeps for devices (also with an extension): images named so cannot be exported there.
WINDOWS_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", *(f"COM{k}" for k in range(1, 10)),
                             *(f"LPT{k}" for k in range(1, 10))})
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")


MAX_UPLOAD_BYTES = 50 * 2**20


MAX_UPLOAD_PIXELS = 40_000_000  # 40 MP: a GlaS tile is 0.4 MP; bigger is a bomb or a whole slide


MAX_SECONDS = 86_400  # effort logged with one save: at most a day


MAX_OPERATIONS = 10**6  # edits of one kind logged with one save


MAX_OPERATION_KINDS = 100


MAX_OPERATION_NAME = 64


MAX_LOG = 10_000  # entries of the operation log saved with one mask


MAX_GLAND_ID = IGNORE - 1  # 65534: 65535 marks unlabelled pixels in training targets


# Images that cannot hold a gland are flagged when added and sorted last in every order.
# Shorter side under MIN_IMAGE_SIDE: the smallest GlaS glands (2% are under ~1,060 px at
# 0.62 µm/px, a disc ~37 px across) do not fit in it.
MIN_IMAGE_SIDE = 32  # px
# Tissue under MIN_TISSUE_SHARE of the pixels (the slide engine's tissue detection, Otsu on
# saturation): blank glass, a background tile, a scan margin.
MIN_TISSUE_SHARE = 0.05
IMAGE_FLAGS = ("too small", "no tissue")


OPERATION_TYPES = EDITOR_OPERATIONS  # what a saved operation log may hold
MASK_KINDS = ("auto", "labels", "binary")

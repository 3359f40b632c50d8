"""Visualisation: overlap pictures, figures and the HTML report."""

from pathoseg.viz.overlay import mask_overlay, overlap_colors, overlap_image

__all__ = ["mask_overlay", "overlap_colors", "overlap_image"]

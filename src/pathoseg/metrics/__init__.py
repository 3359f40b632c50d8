"""Metrics: pixel IoU / Dice and the GlaS challenge's object-level metrics. Pure functions."""

from pathoseg.metrics.glas import ObjectTally, object_metrics, object_tally
from pathoseg.metrics.pixel import PixelCounts, pixel_counts, pixel_summary

__all__ = ["ObjectTally", "PixelCounts", "object_metrics", "object_tally", "pixel_counts", "pixel_summary"]

"""The gland operations of the correction editor, defined once: the editor logs them, the
simulated pathologist (:mod:`pathoseg.hitl.annotator`) plans and costs them, and the API checks
and serves them (:mod:`pathoseg.server.vocabulary`)."""

from __future__ import annotations

# What the simulated pathologist does to a model's glands (and what the editor logs for it).
GLAND_OPERATIONS = ("accept", "accept_all", "delete", "add_click", "add_polygon", "split", "merge",
                    "redraw_boundary")
# What the editor logs: the gland operations plus its own helpers. Brush and eraser strokes on
# a gland are "redraw_boundary".
EDITOR_OPERATIONS = (*GLAND_OPERATIONS, "fill_holes", "undo", "redo")

"""Whole-slide prediction in bounded memory, resumable, with glands whole across tile borders.

The slide (or a region of it) is seen at the model's working resolution, ``model µm/px /
working scale``, on a grid of cells (cores of at most ``tile - 2 * margin`` pixels). Each
cell's window is its core plus ``margin`` pixels on every side (clipped to the region), read
from the best pyramid level, so neighbouring windows overlap by ``2 * margin``:

1. Tissue is found once on a thumbnail (Otsu on saturation); windows without tissue are
   never read or run.
2. Each window's logits are computed once and kept on disk (float16) until the last cell
   that needs them is done. A cell's maps are the logits of the (up to 3x3) windows over
   its window, blended with linear ramps across every overlap (weights add up to 1 there).
3. The one instance decoder runs on the cell's window (core + margin of context); the core
   keeps its labels. Two labels that touch across a core border become one gland when the
   decoders on both sides saw the gland go on across the border (their labels one pixel
   past their own core agree), so a gland cut by a border is one gland and two touching
   glands whose boundary is the border stay two. The gland size floor is applied to whole
   glands after stitching.
4. Each finished cell is written as ``cells/<k>.npz`` and only then appended to
   ``manifest.jsonl``; a rerun with the same settings skips every cell listed there.
5. Outputs are written from the cell files at the end, each in one pass with a few cells in
   memory: QuPath GeoJSON (level-0 pixel coordinates), a pyramidal label TIFF at level-0
   resolution and an overview PNG with the glands outlined.

Memory therefore depends on the tile size, not on the slide size (the per-gland bookkeeping
of step 5 grows with the number of glands, a few dozen bytes each).

Modules: :mod:`.grid`, :mod:`.stitch`, :mod:`.outputs`, :mod:`.run`.
"""

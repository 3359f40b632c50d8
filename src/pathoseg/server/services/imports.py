"""Imports of folders and whole-slide images (``pathoseg project add``), at the resolution the
project works at (its active model's µm/px)."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from sqlalchemy import select

from pathoseg.data.folder import images_in
from pathoseg.data.glas import GLAS_MPP, read_grades
from pathoseg.data.images import (
    BinaryMaskWarning,
    is_image_file,
    read_image,
    read_mask,
)
from pathoseg.data.mpp_estimate import auto_mpp
from pathoseg.data.resolution import AUTO, checkpoint_mpp, parse_mpp, resample_image, resample_labels
from pathoseg.data.slides import Region, Slide, TileSpec, is_slide, tissue_tiles
from pathoseg.engine.checkpoint import load_checkpoint
from pathoseg.errors import PathosegError
from pathoseg.server.services.images import add_image, safe_name
from pathoseg.server.storage import Image, Project


def project_model_mpp(project: Project, model_mpp: float | None = None) -> float:
    """The µm/px the project's active model was trained at (``model_mpp``: what the user says
    it is, for checkpoints from before it was recorded); a one-line error without one."""

    with project.session() as s:
        active = project.active_model(s)
        version = active.version if active is not None else None
    if version is None:
        raise PathosegError("--mpp resamples images to the model's resolution, and the project has no model "
                            "yet (pathoseg project init --model)", project.root)
    mpp = checkpoint_mpp(load_checkpoint(project.model_path(version)))
    if mpp is None and model_mpp is None:
        raise PathosegError(f"model v{version} does not record the µm/px it was trained at; say it with "
                            "--model-mpp, or import the images without --mpp", project.model_path(version))
    return mpp if mpp is not None else model_mpp


def project_mpp(project: Project, model_mpp: float | None = None) -> float:
    """The µm/px the project shows, predicts and retrains at: its active model's, else
    ``model_mpp`` (``--model-mpp``), else (no model yet, or one that does not record it)
    GlaS's, which a project's first model records."""
    with project.session() as s:
        has_model = project.active_model(s) is not None
    if has_model:
        try:
            return project_model_mpp(project, model_mpp)
        except PathosegError:  # a model that does not record its resolution: GlaS's, like training
            pass
    return model_mpp or GLAS_MPP


def add_slide(project: Project, path: str | Path, mpp: str | float | None = None, region: str | None = None,
              tiles: TileSpec | None = None, model_mpp: float | None = None) -> int:
    """Import tissue tiles of a whole-slide image as images to correct, read at the active
    model's resolution (GlaS's 0.62 µm/px when the project has no model yet, or one that does
    not record it). Tiles are named ``<slide>_x<X>_y<Y>`` (level-0 pixels), so the same tile
    imported again replaces nothing and is refused as a duplicate."""
    parsed = parse_mpp(mpp, "--mpp", path)
    auto, given = parsed == AUTO, parsed if parsed != AUTO else None
    target, tiles = project_mpp(project, model_mpp), tiles or TileSpec()
    with _open_slide(path, given, _estimator() if auto else None) as slide:
        area = slide.check_region(Region.parse(region, path)) if region else slide.region
        found = [(safe_name(f"{Path(path).stem}_x{t.x}_y{t.y}"), t) for t in tissue_tiles(slide, area, target, tiles)]
        with project.session() as s:
            taken = set(s.scalars(select(Image.name).where(Image.name.in_([name for name, _ in found]))))
        if taken:
            raise PathosegError(f"{len(taken)} of its {len(found)} tiles are already in the project (e.g. "
                                f"{min(taken)}); nothing imported", path)
        for name, tile in found:
            add_image(project, name, slide.read_scaled(tile.x, tile.y, tile.w, tile.h, tiles.side, tiles.side))
    return len(found)


def add_folder(project: Project, folder: str | Path, mpp: str | float | None = None, region: str | None = None,
               tiles: TileSpec | None = None, model_mpp: float | None = None) -> int:
    """Import every image of ``folder`` (or of ``folder/images`` with ``folder/masks``), and
    tissue tiles of every whole-slide image there (or of ``folder`` itself when it is a slide;
    see :func:`add_slide`). With ``mpp`` (the images' µm/px, or ``"auto"``: estimated per image,
    :mod:`pathoseg.engine.mpp_regressor`), images and masks are resampled to the active model's resolution first,
    so that the app shows, predicts and retrains at one resolution (``model_mpp``: the active
    model's µm/px when its checkpoint does not record it). A GlaS folder's grades (Grade.csv)
    come along: the validation set is drawn per grade. Every file is checked before the first
    is imported, so a bad one leaves the project as it was."""
    folder = Path(folder)
    if folder.is_file() and is_slide(folder):
        return add_slide(project, folder, mpp, region, tiles, model_mpp)
    if region is not None:
        raise PathosegError("--region applies to a whole-slide image; give one slide", folder)
    slides = sorted(p for p in folder.iterdir() if is_slide(p)) if folder.is_dir() else []
    only_slides = bool(slides) and not (folder / "images").is_dir() \
        and not any(is_image_file(p) and p not in slides for p in folder.iterdir())
    img_dir = folder / "images" if (folder / "images").is_dir() else folder
    masks = {p.stem.removesuffix("_anno").removesuffix("_mask"): p
             for p in (folder / "masks").iterdir()} if (folder / "masks").is_dir() else {}
    parsed = parse_mpp(mpp, "--mpp", folder)
    auto, given = parsed == AUTO, parsed if parsed != AUTO else None
    images = [] if only_slides else [p for p in images_in(img_dir) if p not in slides]
    target_mpp = project_model_mpp(project, model_mpp) if mpp is not None and images else None
    grades = read_grades(folder / "Grade.csv") if (folder / "Grade.csv").is_file() else {}
    estimator = _estimator() if auto else None  # one per command: its encoder loads at its first estimate
    slide_mpps = _check_folder(project, slides, images, masks, given, estimator)
    n = sum(add_slide(project, p, slide_mpps[p], None, tiles, model_mpp) for p in slides)
    for path in images:
        name = safe_name(path.name)
        image, mask = read_image(path), _read_import_mask(masks.get(name))
        if target_mpp is not None:
            image_mpp = auto_mpp(path, image, target_mpp, estimator=estimator)[0] if auto else given
            factor = image_mpp / target_mpp
            image = resample_image(image, factor)
            mask = resample_labels(mask, factor) if mask is not None else None
        add_image(project, name, image, mask, grade=grades.get(path.stem))
        n += 1
    return n


def _read_import_mask(path: Path | None) -> np.ndarray | None:
    if path is None:
        return None
    with warnings.catch_warnings():  # a binary mask's components become its glands, as the app reads them
        warnings.simplefilter("ignore", BinaryMaskWarning)
        return read_mask(path)


def _open_slide(path: Path, mpp: float | None, estimator=None) -> Slide:
    """A slide at ``mpp``, else its metadata's, else (with an ``estimator``, ``--mpp auto``)
    the µm/px its tissue gives."""
    slide = Slide(path, mpp=mpp, require_mpp=estimator is None)
    try:
        if estimator is not None:
            slide.estimate_missing_mpp(estimator)
    except BaseException:
        slide.close()
        raise
    return slide


def _estimator():
    from pathoseg.engine.mpp_regressor import MppRegressor  # loads torch: only when estimating

    return MppRegressor()


def _check_folder(project: Project, slides: list[Path], images: list[Path], masks: dict[str, Path],
                  mpp: float | None, estimator=None) -> dict[Path, float]:
    """What :func:`add_folder` would refuse half-way, refused before anything is imported:
    a slide that does not open or has no resolution (none estimated by ``estimator``), an image or
    mask that does not read, a mask of another size, two files with one name, a name already in
    the project; the slides' µm/px. Images are decoded here and again on import: holding a
    whole folder in memory costs more than reading twice."""
    slide_mpps = {}
    for path in slides:
        with _open_slide(path, mpp, estimator) as slide:
            slide_mpps[path] = slide.mpp
    with project.session() as s:
        taken = set(s.scalars(select(Image.name)))
    seen: dict[str, Path] = {}
    for path in images:
        name = safe_name(path.name)
        if name in taken:
            raise PathosegError(f"an image named {name!r} is already in the project; nothing imported", path)
        if name in seen:
            raise PathosegError(f"{seen[name].name} and {path.name} would both be named {name!r}; "
                                "nothing imported", path)
        seen[name] = path
        image, mask = read_image(path), _read_import_mask(masks.get(name))
        if mask is not None and mask.shape != image.shape[:2]:
            raise PathosegError(f"mask {masks[name].name} is {mask.shape[1]}x{mask.shape[0]}, its image "
                                f"{image.shape[1]}x{image.shape[0]}; nothing imported", path)
    return slide_mpps

"""A user's own data: ``images/`` and ``masks/`` paired by file stem."""

from __future__ import annotations

from pathlib import Path

from pathoseg.data.images import IMAGE_SUFFIXES, is_image_file
from pathoseg.data.resolution import check_mpp, read_mpp_sidecar
from pathoseg.data.samples import Sample, SampleSet
from pathoseg.errors import PathosegError

MASK_SUFFIXES = ("", "_anno", "_mask", "_label", "_labels")


def _mask_for(stem: str, masks: dict[str, Path]) -> Path | None:
    for suffix in MASK_SUFFIXES:
        if (stem + suffix) in masks:
            return masks[stem + suffix]
    return None


def _image_files(folder: Path) -> list[Path]:
    """Image files in a folder; stray non-image files are an error that names them."""
    files = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    stray = [p for p in files if p.is_file() and p.suffix.lower() not in IMAGE_SUFFIXES]
    if stray:
        raise PathosegError(
            f"not an image file (expected one of {', '.join(IMAGE_SUFFIXES)})", stray[0]
        )
    return [p for p in files if is_image_file(p)]


def load_folder(root: str | Path, require_masks: bool = True, mpp: float | None = None) -> SampleSet:
    """``mpp``: µm/px at native resolution; default the folder's ``mpp.txt`` or
    ``dataset.json`` (``{"mpp": 0.5}``), else unknown."""
    root = Path(root)
    img_dir = root / "images"
    if not img_dir.is_dir():
        raise PathosegError("expected an images/ folder (and masks/ beside it)", root)
    images = _image_files(img_dir)
    if not images:
        raise PathosegError("folder holds no images", img_dir)
    mask_dir = root / "masks"
    masks = {p.stem: p for p in _image_files(mask_dir)} if mask_dir.is_dir() else {}
    if require_masks and not masks:
        raise PathosegError("expected a masks/ folder with one mask per image", mask_dir)
    samples = []
    for img in images:
        mask = _mask_for(img.stem, masks)
        if require_masks and mask is None:
            raise PathosegError(f"no mask for this image in {mask_dir}", img)
        samples.append(Sample(img.stem, img, mask))
    mpp = check_mpp(mpp, "--mpp", root) if mpp is not None else read_mpp_sidecar(root)
    return SampleSet(samples, root, "folder", mpp=mpp)


def images_in(path: str | Path) -> list[Path]:
    """Images named by a path: the file itself, or every image in a folder."""
    path = Path(path)
    if path.is_file():
        if not is_image_file(path):
            raise PathosegError("not an image file", path)
        return [path]
    if path.is_dir():
        files = [p for p in sorted(path.iterdir()) if is_image_file(p)]
        if not files:
            raise PathosegError("folder holds no images", path)
        return files
    raise PathosegError("no such file or folder", path)

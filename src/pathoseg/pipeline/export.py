"""``pathoseg export`` and ``--backend``: a checkpoint as an ONNX file (fp32 or int8), and the
model file + backend flags of ``predict`` / ``evaluate`` turned into something to predict with."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pathoseg.data import load_dataset
from pathoseg.data.glas import find_release_root
from pathoseg.data.images import is_image_file
from pathoseg.data.splits import make_split
from pathoseg.engine.backends import BackendConfig, quantize_onnx
from pathoseg.engine.checkpoint import load_model
from pathoseg.engine.onnx_file import checkpoint_from_metadata, export_onnx, read_metadata
from pathoseg.errors import PathosegError
from pathoseg.io import file_digest

EXPORT_FORMATS = ("onnx",)


def calibration_images(calibration: str | Path | None, data: str | Path | None = None) -> tuple[Path, ...]:
    """Images to calibrate int8 on: ``calibration`` (a folder of images, or a data set whose
    training images are used), else the training images of ``data``; () when neither is given.
    Test images are never used, so int8 results on a test set stay honest."""
    source = calibration if calibration is not None else data
    if source is None:
        return ()
    folder = Path(source)
    if not folder.is_dir():
        raise PathosegError("calibration images: not a folder", folder)
    if find_release_root(folder) is not None or (folder / "images").is_dir():  # a data set
        dataset = load_dataset(folder)
        kind = "official" if dataset.kind.startswith("glas") else "random"
        train = make_split(dataset, kind).train
        return tuple(dataset[name].image_path for name in train)
    images = tuple(p for p in sorted(folder.iterdir()) if p.is_file() and is_image_file(p))
    if not images:
        raise PathosegError("calibration folder holds no images", folder)
    return images


def backend_config(backend: str | None, model_path: str | Path, int8: bool = False,
                   calibration: str | Path | None = None, data: str | Path | None = None) -> BackendConfig:
    """The backend of ``--backend`` (default: onnx for a ``.onnx`` model file, else torch),
    ``--int8`` and ``--calibration`` / ``--data``."""
    if backend is None:
        backend = "onnx" if Path(model_path).suffix.lower() == ".onnx" or int8 else "torch"
    images = calibration_images(calibration, data) if int8 else ()
    try:
        return BackendConfig(backend, int8=int8, calibration=images)
    except PathosegError as exc:
        raise PathosegError(str(exc), model_path) from None


@dataclass
class ExportResult:
    path: Path
    precision: str
    metadata: dict[str, str]


def default_export_path(model_path: Path, int8: bool) -> Path:
    return model_path.with_name(f"{model_path.stem}{'.int8' if int8 else ''}.onnx")


def export_model(model_path: str | Path, out: str | Path | None = None, fmt: str = "onnx", int8: bool = False,
                 calibration: Sequence[Path] = ()) -> ExportResult:
    """Write ``model_path`` (a checkpoint, or an fp32 pathoseg ONNX file for ``int8``) as ONNX
    to ``out`` (default ``<stem>.onnx`` / ``<stem>.int8.onnx`` beside it)."""
    import tempfile

    if fmt not in EXPORT_FORMATS:
        raise PathosegError(f"unknown export format {fmt!r}; choose from {', '.join(EXPORT_FORMATS)}")
    source = Path(model_path)
    target = Path(out) if out is not None else default_export_path(source, int8)
    if target.resolve() == source.resolve():
        raise PathosegError("--out would overwrite the model file itself", target)
    if target.suffix.lower() != ".onnx":
        raise PathosegError("an ONNX export's name must end in .onnx", target)
    if int8 and not calibration:
        raise PathosegError("int8 needs calibration images: pass --calibration DIR (an images folder or a data "
                            "set, whose training images are used) or --data", source)
    is_onnx = source.suffix.lower() == ".onnx"
    if is_onnx and not int8:
        raise PathosegError("already an ONNX file; pass --int8 to quantise it", source)
    if is_onnx:
        fp32 = source
        scale = checkpoint_from_metadata(read_metadata(source), source).scale
        quantize_onnx(fp32, target, calibration, scale)
    else:
        model, ckpt = load_model(source)
        if not int8:
            export_onnx(model, ckpt, target, source_digest=file_digest(source)[:12])
        else:
            with tempfile.TemporaryDirectory() as tmp:
                fp32 = export_onnx(model, ckpt, Path(tmp) / "fp32.onnx", source_digest=file_digest(source)[:12])
                quantize_onnx(fp32, target, calibration, ckpt.scale)
    metadata = read_metadata(target)
    return ExportResult(target, metadata["precision"], metadata)

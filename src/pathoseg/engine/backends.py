"""Inference backends: the PyTorch model itself, or the same network exported to ONNX and run
by ONNX Runtime (fp32, or int8 after static quantisation calibrated on training tiles).

:class:`OnnxSegmenter` duck-types :class:`~pathoseg.models.GlandSegmenter` for prediction
(``stride``, ``head``, ``config``, ``eval()``, ``to()``, ``__call__(x) -> logits``), so
``predict_logits``, tiles, TTA, whole slides and evaluation run on it unchanged.

The file itself (export, metadata, reading it back) is :mod:`pathoseg.engine.onnx_file`.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pathoseg.data.images import read_image
from pathoseg.data.resolution import resample_image
from pathoseg.engine.checkpoint import Checkpoint, load_model
from pathoseg.engine.onnx_file import (
    INPUT_NAME,
    OUTPUT_NAME,
    checkpoint_from_metadata,
    export_onnx,
    ort_module,
    read_metadata,
    write_with_metadata,
)
from pathoseg.errors import PathosegError
from pathoseg.io import file_digest
from pathoseg.models import GlandSegmenter, ModelConfig
from pathoseg.models.heads import Head, get_head

BACKENDS = ("torch", "onnx")
GRAPH_OPTIMIZATIONS = ("basic", "extended", "all")


@dataclass(frozen=True)
class OnnxRuntimeConfig:
    """How ONNX Runtime runs a model (see docs/benchmarks.md, 'Inference backends', for the
    measurements behind the defaults)."""

    # 0 = ONNX Runtime's default, one thread per physical core. The sweep against 1 and 2 ran on a
    # loaded machine only, where 1 won through contention (docs/benchmarks.md, Inference backends).
    intra_op_threads: int = 0
    graph_optimization: str = "all"  # fastest of basic/extended/all at every thread count (1.2-2.5x)
    use_cuda: bool = True  # the CUDA provider when this onnxruntime build has it and the device is cuda

    def __post_init__(self) -> None:
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise PathosegError(f"graph optimisation {self.graph_optimization!r}: choose from "
                                f"{', '.join(GRAPH_OPTIMIZATIONS)}")
        if self.intra_op_threads < 0:
            raise PathosegError(f"intra-op threads must be 0 (default) or more, not {self.intra_op_threads}")


@dataclass(frozen=True)
class CalibrationConfig:
    """Static int8 calibration: random crops of training images at the model's working scale."""

    crop: int = 256  # side at working scale, a multiple of 32
    crops_per_image: int = 2
    max_images: int = 32  # spread evenly over the images given
    seed: int = 0

    def __post_init__(self) -> None:
        if self.crop < 32 or self.crop % 32:
            raise PathosegError(f"calibration crop {self.crop} must be a positive multiple of 32")
        if self.crops_per_image < 1 or self.max_images < 1:
            raise PathosegError("calibration needs at least one crop of one image")


@dataclass(frozen=True)
class BackendConfig:
    """Which backend runs a model: ``torch`` (the checkpoint as it is) or ``onnx`` (exported
    once to a cache file keyed by the checkpoint's digest; ``int8`` quantised with
    ``calibration`` images)."""

    backend: str = "torch"
    int8: bool = False
    calibration: tuple[Path, ...] = ()  # images to calibrate int8 on
    cache_dir: Path | None = None  # None: beside the model file (a temporary folder when not writable)
    runtime: OnnxRuntimeConfig = OnnxRuntimeConfig()
    calibration_config: CalibrationConfig = CalibrationConfig()

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise PathosegError(f"unknown backend {self.backend!r}; choose from {', '.join(BACKENDS)}")
        if self.int8 and self.backend != "onnx":
            raise PathosegError("int8 runs on ONNX Runtime: pass --backend onnx with --int8")

    @property
    def precision(self) -> str:
        return "int8" if self.int8 else "fp32"

    def identity(self) -> dict[str, str]:
        """What a resumable result made with this backend must share (empty for torch, so
        results made before backends existed still resume)."""
        return {} if self.backend == "torch" else {"backend": f"{self.backend}-{self.precision}"}


# -- running it: a session that looks like the model to prediction ------------------------------------


class OnnxSegmenter:
    """An ONNX Runtime session with what prediction uses of :class:`GlandSegmenter`."""

    def __init__(self, path: str | Path, config: ModelConfig, precision: str, stride: int = 32,
                 runtime: OnnxRuntimeConfig = OnnxRuntimeConfig(), device: torch.device | str = "cpu") -> None:
        ort = ort_module()
        self.path = Path(path)
        self.config = config
        self.precision = precision
        self.stride = stride
        self.runtime = runtime
        options = ort.SessionOptions()
        options.intra_op_num_threads = runtime.intra_op_threads
        options.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[runtime.graph_optimization]
        providers = ["CPUExecutionProvider"]
        if (runtime.use_cuda and torch.device(device).type == "cuda"
                and "CUDAExecutionProvider" in ort.get_available_providers()):
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types for bad graphs
            raise PathosegError(f"ONNX Runtime cannot load it ({type(exc).__name__}: {str(exc)[:200]})",
                                path) from None
        self.providers = self.session.get_providers()

    @property
    def head(self) -> Head:
        return get_head(self.config.head)

    def eval(self) -> OnnxSegmenter:  # inference only: nothing to switch
        return self

    def to(self, device: torch.device | str) -> OnnxSegmenter:  # the session keeps its provider
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        image = np.ascontiguousarray(x.detach().float().cpu().numpy())
        (logits,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: image})
        return torch.from_numpy(logits).to(x.device)


def load_onnx(path: str | Path, runtime: OnnxRuntimeConfig = OnnxRuntimeConfig(),
              device: torch.device | str = "cpu") -> tuple[OnnxSegmenter, Checkpoint]:
    """A pathoseg ONNX file as a model for prediction, and the settings it was exported with."""
    metadata = read_metadata(path)
    ckpt = checkpoint_from_metadata(metadata, path)
    try:
        get_head(ckpt.model_config.head)  # a retired head says so now, not at the first image
    except PathosegError as exc:
        raise PathosegError(str(exc), path) from None
    stride = int(metadata.get("stride", "32"))
    return OnnxSegmenter(path, ckpt.model_config, metadata["precision"], stride, runtime, device), ckpt


# -- int8: static quantisation calibrated on training tiles --------------------------------------------


def calibration_tiles(images: Sequence[Path], scale: float, cfg: CalibrationConfig) -> Iterator[np.ndarray]:
    """Random ``cfg.crop`` crops (1, 3, crop, crop) float32 in [0, 1] of ``images`` at working
    ``scale``; images smaller than a crop give one crop of their largest multiple of 32."""
    rng = np.random.default_rng(cfg.seed)
    chosen = [images[i] for i in np.linspace(0, len(images) - 1, min(len(images), cfg.max_images)).round().astype(int)]
    for path in dict.fromkeys(chosen):
        small = resample_image(read_image(path), scale)
        h, w = small.shape[:2]
        ch, cw = min(cfg.crop, h // 32 * 32), min(cfg.crop, w // 32 * 32)
        if ch < 32 or cw < 32:
            raise PathosegError(f"too small to calibrate on at working scale {scale} ({w}x{h} px)", path)
        for _ in range(cfg.crops_per_image):
            top, left = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
            crop = small[top:top + ch, left:left + cw]
            yield np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32) / 255


def calibration_digest(images: Sequence[Path], cfg: CalibrationConfig) -> str:
    """A short hash of the calibration images (names, sizes, times) and settings: the int8 cache key."""
    from pathoseg.runconfig import digest

    return digest([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime] for p in images] + [asdict(cfg)])


def shape_nodes(graph) -> list[str]:
    """Nodes that compute sizes, not pixels: none of their inputs comes from the image other
    than through ``Shape``. EfficientNet-Lite's 'same' padding and the ASPP pooling's upsampling
    compute their sizes in float ops; quantising those would round the sizes wrongly."""
    data = {i.name for i in graph.input} - {t.name for t in graph.initializer}
    found = []
    for node in graph.node:  # ONNX graphs are topologically sorted
        if node.op_type != "Shape" and any(name in data for name in node.input):
            data.update(node.output)
        else:
            found.append(node.name)
    return found


def quantize_onnx(fp32_path: str | Path, out: str | Path, images: Sequence[Path], scale: float,
                  cfg: CalibrationConfig = CalibrationConfig()) -> Path:
    """Static int8 quantisation (QDQ, per-channel int8 weights, int8 activations from min/max
    calibration on tiles of ``images``), with the fp32 file's metadata and precision int8."""
    if not images:
        raise PathosegError("int8 needs calibration images: pass --calibration DIR (an images folder or a data "
                            "set, whose training images are used) or --data", fp32_path)
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    metadata = read_metadata(fp32_path)
    if metadata["precision"] != "fp32":
        raise PathosegError(f"already {metadata['precision']}; quantise an fp32 export", fp32_path)

    class Tiles(CalibrationDataReader):
        def __init__(self) -> None:
            self.tiles = calibration_tiles(images, scale, cfg)

        def get_next(self) -> dict[str, np.ndarray] | None:
            tile = next(self.tiles, None)
            return None if tile is None else {INPUT_NAME: tile}

    out = Path(out)
    with tempfile.TemporaryDirectory() as tmp:
        prepared, quantized = Path(tmp) / "prepared.onnx", Path(tmp) / "int8.onnx"
        # Shape inference and constant folding first, as ONNX Runtime's quantisation guide asks.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        excluded = shape_nodes(onnx.load(str(prepared), load_external_data=False).graph)
        quantize_static(str(prepared), str(quantized), Tiles(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
        proto = onnx.load(str(quantized))
    return write_with_metadata(proto, out, {**metadata, "precision": "int8"})


# -- one call: a model file and a backend in, something to predict with out -----------------------------

_CACHED = re.compile(r"\.[0-9a-f]{12}(\.int8-[0-9a-f]{12})?\.onnx$")


def _cache_folder(source: Path, cfg: BackendConfig) -> Path:
    folder = cfg.cache_dir or source.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder):
            pass
    except OSError:  # a read-only model folder: cache in the temporary folder instead
        folder = Path(tempfile.gettempdir()) / "pathoseg-onnx"
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def _drop_stale(folder: Path, stem: str, keep: set[Path]) -> None:
    """Cached exports of an earlier version of the same model file (it was retrained)."""
    for old in folder.glob(f"{stem}.*.onnx"):
        if old not in keep and _CACHED.search(old.name[len(stem):]):
            old.unlink(missing_ok=True)


def onnx_file_for(model_path: str | Path, cfg: BackendConfig) -> Path:
    """The ONNX file for ``model_path`` at ``cfg``'s precision: the file itself when it is one,
    else an export cached beside it (``<stem>.<sha1>.onnx``, ``<stem>.<sha1>.int8-<calibration>.onnx``),
    made once per checkpoint digest and calibration set."""
    source = Path(model_path)
    is_onnx = source.suffix.lower() == ".onnx"
    if is_onnx:
        metadata = read_metadata(source)
        if not cfg.int8 or metadata["precision"] == "int8":
            return source
    if cfg.int8 and not cfg.calibration:
        raise PathosegError("int8 needs calibration images: pass --calibration DIR (an images folder or a data "
                            "set, whose training images are used) or --data", source)
    folder = _cache_folder(source, cfg)
    key = file_digest(source)[:12]
    fp32 = source if is_onnx else folder / f"{source.stem}.{key}.onnx"
    wanted = fp32
    if not fp32.is_file():
        model, ckpt = load_model(source)
        export_onnx(model, ckpt, fp32, source_digest=key)
    if cfg.int8:
        calib = calibration_digest(cfg.calibration, cfg.calibration_config)
        wanted = folder / f"{source.stem}.{key}.int8-{calib}.onnx"
        if not wanted.is_file():
            scale = checkpoint_from_metadata(read_metadata(fp32), fp32).scale
            quantize_onnx(fp32, wanted, cfg.calibration, scale, cfg.calibration_config)
    _drop_stale(folder, source.stem, {fp32, wanted, source})
    return wanted


def load_backend(model_path: str | Path, cfg: BackendConfig = BackendConfig(),
                 device: torch.device | str = "cpu") -> tuple[GlandSegmenter | OnnxSegmenter, Checkpoint]:
    """The model at ``model_path`` (a checkpoint or a pathoseg ``.onnx`` file) on ``cfg``'s
    backend, and its checkpoint settings (weightless for ONNX)."""
    is_onnx = Path(model_path).suffix.lower() == ".onnx"
    if cfg.backend == "torch":
        if is_onnx:
            raise PathosegError("an ONNX file runs on ONNX Runtime: pass --backend onnx (or a checkpoint)", model_path)
        return load_model(model_path, device)
    return load_onnx(onnx_file_for(model_path, cfg), cfg.runtime, device)


def describe(model: Any) -> str:
    """One line naming the backend a model runs on (for logs and the bench)."""
    if isinstance(model, OnnxSegmenter):
        return f"ONNX Runtime {model.precision} ({', '.join(model.providers)}) from {model.path.name}"
    return "PyTorch"

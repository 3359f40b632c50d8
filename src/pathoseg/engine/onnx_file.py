"""The pathoseg ONNX file: a DeepLabV3+ exported with dynamic batch and sides, carrying in its
ONNX metadata everything prediction reads from a checkpoint (model config, head channels,
stride, working scale, µm/px, decoder settings, split and history), so the ``.onnx`` file alone
is enough to predict and evaluate. Reading refuses anything else in one line."""

from __future__ import annotations

import json
import tempfile
import warnings
from dataclasses import fields
from pathlib import Path

import torch

from pathoseg import __version__
from pathoseg.data.resolution import checkpoint_mpp
from pathoseg.engine.checkpoint import Checkpoint
from pathoseg.errors import PathosegError
from pathoseg.io import atomic_path
from pathoseg.models import GlandSegmenter, ModelConfig
from pathoseg.models.heads import get_head

ONNX_FORMAT = "pathoseg-onnx-v1"
INPUT_NAME = "image"  # float32 (batch, 3, height, width), RGB in [0, 1]; sides multiples of the stride
OUTPUT_NAME = "logits"  # float32 (batch, channels, height, width), one logit per head channel
EXPECTED = (f"a pathoseg ONNX file ({ONNX_FORMAT}, written by 'pathoseg export'): input '{INPUT_NAME}' "
            f"float32 (batch, 3, height, width) RGB in [0, 1], output '{OUTPUT_NAME}', and pathoseg metadata "
            "(model_config, scale, instances, mpp)")
# Checkpoint fields prediction and evaluation read, kept in the ONNX metadata; weights, the
# optimiser and the scheduler stay out (the graph holds the weights).
_CARRIED = ("scale", "train_config", "split", "epoch", "metrics", "history", "instances", "mpp")


def ort_module():
    try:
        import onnxruntime
    except ImportError:  # an optional install could leave it out; say what to do
        raise PathosegError("the ONNX backend needs onnxruntime: pip install onnxruntime") from None
    return onnxruntime


def onnx_metadata(ckpt: Checkpoint, precision: str, source_digest: str) -> dict[str, str]:
    """The metadata an exported file carries (ONNX metadata values are strings)."""
    head = get_head(ckpt.model_config.head)
    carried = {name: getattr(ckpt, name) for name in _CARRIED}
    carried["mpp"] = checkpoint_mpp(ckpt)  # resolved now: the training data may be gone later
    return {
        "pathoseg_format": ONNX_FORMAT,
        "pathoseg_version": __version__,
        "precision": precision,
        "model_config": json.dumps(ckpt.model_config.to_dict()),
        "head_channels": json.dumps(list(head.channels)),
        "stride": "32",
        "source_sha1": source_digest,
        "checkpoint": json.dumps(carried, default=str),
    }


def write_with_metadata(model_proto, path: Path, metadata: dict[str, str]) -> Path:
    import onnx

    del model_proto.metadata_props[:]
    for key, value in metadata.items():
        entry = model_proto.metadata_props.add()
        entry.key, entry.value = key, value
    with atomic_path(path) as tmp:
        onnx.save(model_proto, str(tmp))
    return path


def export_onnx(model: GlandSegmenter, ckpt: Checkpoint, path: str | Path, source_digest: str = "",
                opset: int = 17) -> Path:
    """Write ``model`` as ONNX with dynamic batch, height and width (sides multiples of
    ``model.stride``); the normalisation is part of the graph, since it is part of the model."""
    import onnx

    path = Path(path)
    model = model.to("cpu").eval()
    example = torch.rand(1, 3, 2 * model.stride, 3 * model.stride)
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        # The TorchScript exporter is deprecated in favour of torch.export's, but it needs no
        # onnxscript and gives DeepLabV3+ dynamic sides as they are (tested on odd sizes).
        warnings.simplefilter("ignore")
        raw = Path(tmp) / "model.onnx"
        torch.onnx.export(model, (example,), str(raw), dynamo=False, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic},
                          opset_version=opset, do_constant_folding=True)
        proto = onnx.load(str(raw))
    return write_with_metadata(proto, path, onnx_metadata(ckpt, "fp32", source_digest))


def read_metadata(path: str | Path) -> dict[str, str]:
    """The pathoseg metadata of an ONNX file; anything else is a one-line error saying what is expected."""
    path = Path(path)
    if not path.is_file():
        raise PathosegError("ONNX file not found", path)
    import onnx

    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf decode errors and more
        raise PathosegError(f"not a readable ONNX file ({type(exc).__name__}); expected {EXPECTED}", path) from None
    metadata = {p.key: p.value for p in proto.metadata_props}
    inputs = [i.name for i in proto.graph.input if i.name not in {t.name for t in proto.graph.initializer}]
    outputs = [o.name for o in proto.graph.output]
    found = metadata.get("pathoseg_format")
    if found is None:
        raise PathosegError(f"not a pathoseg ONNX file (inputs {inputs}, outputs {outputs}, no pathoseg metadata); "
                            f"expected {EXPECTED}", path)
    if found != ONNX_FORMAT:
        raise PathosegError(f"written by pathoseg {metadata.get('pathoseg_version', '?')} as {found}; this pathoseg "
                            f"({__version__}) reads {ONNX_FORMAT}: export the checkpoint again", path)
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise PathosegError(f"inputs {inputs} and outputs {outputs} are not pathoseg's; expected {EXPECTED}", path)
    missing = [k for k in ("model_config", "checkpoint", "precision") if k not in metadata]
    if missing:
        raise PathosegError(f"pathoseg metadata lacks {', '.join(missing)}; expected {EXPECTED}", path)
    return metadata


def checkpoint_from_metadata(metadata: dict[str, str], path: str | Path) -> Checkpoint:
    """A weightless :class:`Checkpoint` with the settings the file was exported with."""
    try:
        known = {f.name for f in fields(ModelConfig)}
        config = ModelConfig(**{k: v for k, v in json.loads(metadata["model_config"]).items() if k in known})
        carried = json.loads(metadata["checkpoint"])
        return Checkpoint(config, {}, **{k: carried[k] for k in _CARRIED if k in carried})
    except (ValueError, TypeError, KeyError) as exc:
        raise PathosegError(f"pathoseg metadata is malformed ({type(exc).__name__}: {exc}); expected {EXPECTED}",
                            path) from None

"""Whole-slide prediction: small pyramidal TIFFs built here (tifffile, SubIFD pyramids with
resolution tags, read back through tiffslide) from synthetic glands and GlaS test images on a
glass-like background, with known ground truth."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import shapely
import tifffile
import torch
from sqlalchemy import select

from pathoseg.cli import main
from pathoseg.data.images import read_image
from pathoseg.data.slides import Region, Slide, is_slide, tissue_mask, write_pyramidal_tiff
from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.data.targets import head_targets
from pathoseg.engine.checkpoint import Checkpoint, load_model
from pathoseg.engine.instances import InstanceConfig, decode_instances
from pathoseg.engine.predict import PredictConfig, predict_instances
from pathoseg.engine.wsi.grid import Grid
from pathoseg.engine.wsi.run import SlideConfig, predict_slide
from pathoseg.engine.wsi.stitch import CoreCache, Glands, border_matches, read_manifest, resolve_glands, stitch_cells
from pathoseg.errors import PathosegError
from pathoseg.metrics.glas import object_metrics, object_tally
from pathoseg.models import ModelConfig, build_model


def stitched_labels(work: Path, grid: Grid, glands: Glands) -> np.ndarray:
    """The whole canvas as one label map (slides use the streaming writers)."""
    return CoreCache(work, grid, glands).sample(np.arange(grid.height), np.arange(grid.width)).astype(np.int32)


GLASS = (238, 236, 240)  # an empty slide: bright, almost grey
ROOT = Path(__file__).resolve().parents[1]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a > 0, b > 0
    return float((a & b).sum() / max(1, (a | b).sum()))


def on_glass(image: np.ndarray, shape: tuple[int, int], at: tuple[int, int]) -> np.ndarray:
    canvas = np.empty((*shape, 3), np.uint8)
    canvas[:] = GLASS
    y, x = at
    canvas[y:y + image.shape[0], x:x + image.shape[1]] = image
    return canvas


# -- models ---------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A contour-head model trained for a few seconds on synthetic glands (0.62 µm/px), half
    of each training image turned to glass, as on the edge of a slide's tissue."""
    from pathoseg.data import load_dataset
    from pathoseg.data.cache import load_scaled
    from pathoseg.data.images import write_label_png, write_rgb_png
    from pathoseg.engine.train import TrainConfig, fit

    folder = tmp_path_factory.mktemp("tiny")
    rng = np.random.default_rng(0)
    for i in range(8):
        image, labels = synthetic_sample(1100 + i, SyntheticConfig(size=(128, 160)))
        glass = np.zeros(labels.shape, bool)
        cut = int(rng.integers(30, 80))
        side = (np.s_[:, :cut], np.s_[:, -cut:], np.s_[:cut], np.s_[-cut:])[i % 4]  # left, right, top, bottom
        glass[side] = True
        image[glass] = GLASS
        labels[glass] = 0
        write_rgb_png(folder / "data" / "images" / f"s{i}.png", image)
        write_label_png(folder / "data" / "masks" / f"s{i}.png", labels)
    data = load_dataset(folder / "data")
    cfg = TrainConfig(model=ModelConfig("lite0", head="contour"), epochs=5, batch_size=4, crop=96, scale=1.0,
                      lr=3e-3, repeats=2, progress=False)
    torch.manual_seed(0)
    model = build_model(cfg.model)
    fit(model, load_scaled(data.samples, 1.0, False), [], cfg, torch.device("cpu"))
    return Checkpoint.of(model, 1.0, mpp=0.62, instances={"min_size": 50}).save(folder / "tiny.pt")


@pytest.fixture(scope="module")
def untrained_model(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = build_model(ModelConfig(weights="none"))
    return Checkpoint.of(model, 1.0, mpp=0.62).save(tmp_path_factory.mktemp("untrained") / "m.pt")


class LocalModel(torch.nn.Module):
    """A stand-in for a trained model whose outputs depend on a 7x7 neighbourhood only, so a
    tiled prediction must equal a whole-image one: gland where the 7x7 mean of the green
    channel is low (epithelium and nuclei; the decoder fills the lumens), no contours.
    DeepLabV3+ itself is not local (its image-level pooling sees the whole window)."""

    stride = 32
    config = ModelConfig(head="contour")

    @property
    def head(self):
        from pathoseg.models import get_head

        return get_head("contour")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        green = torch.nn.functional.avg_pool2d(x[:, 1:2], 7, stride=1, padding=3, count_include_pad=False)
        return torch.cat([30 * (0.62 - green), torch.full_like(green, -10.0)], dim=1)


def synthetic_slide(folder: Path, mpp: float = 0.62, upscale: int = 1) -> tuple[Path, np.ndarray, np.ndarray]:
    """(slide, its level-0 picture at 0.62 µm/px, ground truth) for 400x500 px of synthetic
    glands on glass; ``upscale`` 2 writes it at 0.31 µm/px (level 1 is then the 0.62 picture)."""
    image, labels = synthetic_sample(900, SyntheticConfig(size=(400, 500), glands=(8, 12)))
    canvas = on_glass(image, (560, 700), (80, 100))
    truth = np.zeros(canvas.shape[:2], np.int32)
    truth[80:480, 100:600] = labels
    level0 = np.repeat(np.repeat(canvas, upscale, 0), upscale, 1)
    return write_pyramidal_tiff(folder / f"synth_{upscale}.tif", level0, mpp=mpp / upscale), canvas, truth


def run_slide(model, slide_path: Path, out: Path, tile: int = 256, **kwargs):
    """Predict a slide with a checkpoint (path) or a model object (scale 1.0, 0.62 µm/px)."""
    icfg = InstanceConfig(min_size=50)
    if isinstance(model, Path):
        model, ckpt = load_model(model)
        icfg = ckpt.instance_config()
    with Slide(slide_path) as slide:
        return predict_slide(model, slide, kwargs.pop("region", slide.region), out, 0.62, 1.0, icfg,
                             SlideConfig(tile=tile), progress=False, **kwargs)


# -- reading slides ----------------------------------------------------------------------------------------------------
def test_pyramidal_tiff_reads_as_a_slide_with_its_resolution(tmp_path):
    path, canvas, _ = synthetic_slide(tmp_path, upscale=2)
    assert is_slide(path)
    with Slide(path) as slide:
        assert slide.backend == "tiffslide"  # the TIFF family goes to tiffslide, which sees the SubIFD levels
        assert slide.dimensions == (1400, 1120) and slide.mpp == pytest.approx(0.31)
        assert slide.level_downsamples[:2] == [1.0, 2.0]
        # At 0.62 µm/px the best level is level 1, read exactly.
        assert slide.best_level(2.0) == 1
        assert np.array_equal(slide.read_scaled(0, 0, 1400, 1120, 700, 560), canvas)
        thumb, ds = slide.thumbnail(slide.region, 200)
        assert max(thumb.shape[:2]) == 200 and ds == pytest.approx(7.0)
        tissue = tissue_mask(thumb)
        scale = 200 / 700
        inside = tissue[int(100 * scale):int(460 * scale), int(120 * scale):int(580 * scale)]
        assert inside.mean() > 0.98 and tissue.mean() < 0.6  # the tissue and little else
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, canvas)  # a single-level TIFF is an image
    assert not is_slide(plain)


def test_openslide_reads_the_same_pixels_and_resolution(tmp_path):
    pytest.importorskip("openslide", reason="OpenSlide (openslide-python + openslide-bin) is not installed")
    path, _, _ = synthetic_slide(tmp_path, upscale=2)
    with Slide(path, backend="openslide") as by_openslide, Slide(path, backend="tiffslide") as by_tiffslide:
        assert by_openslide.backend == "openslide"
        assert by_openslide.dimensions == by_tiffslide.dimensions and by_openslide.mpp == pytest.approx(0.31)
        box = (300, 200, 600, 500)
        assert np.array_equal(by_openslide.read_scaled(*box, 300, 250), by_tiffslide.read_scaled(*box, 300, 250))
    with pytest.raises(PathosegError, match="unknown slide backend"):
        Slide(path, backend="bioformats")


def test_project_add_takes_tissue_tiles_of_a_slide_at_the_models_resolution(tmp_path):
    from pathoseg.data.slides import TileSpec
    from pathoseg.server.services.imports import add_folder
    from pathoseg.server.storage import Image as ImageRow
    from pathoseg.server.storage import Project

    path, canvas, _ = synthetic_slide(tmp_path, upscale=2)  # 0.31 µm/px; the glands on 400x500 of 560x700 at 0.62
    project = Project(tmp_path / "lab", create=True)  # no model yet: tiles at GlaS's 0.62 µm/px
    assert add_folder(project, path, tiles=TileSpec(side=128, max_tiles=4)) == 4
    with project.session() as s:
        names = sorted(s.scalars(select(ImageRow.name)))
    assert len(names) == 4 and all(n.startswith("synth_2_x") for n in names)
    for name in names:
        x, y = (int(v) for v in name.removeprefix("synth_2_x").split("_y"))
        tile = read_image(project.image_path(name))
        assert tile.shape == (128, 128, 3)  # 256 level-0 px read at half resolution
        assert np.array_equal(tile, canvas[y // 2:y // 2 + 128, x // 2:x // 2 + 128])  # the 0.62 µm/px pixels
        assert y // 2 >= 80 and y // 2 + 128 <= 480 + 64 and x // 2 + 64 >= 100 and x // 2 <= 600  # on the tissue
    with pytest.raises(PathosegError, match="already in the project"):  # the same tiles again: refused by name
        add_folder(project, path, tiles=TileSpec(side=128, max_tiles=4))
    with pytest.raises(PathosegError, match="outside the slide"):
        add_folder(project, path, region="0,0,5000,10")



def test_project_add_of_a_folder_with_a_bad_file_imports_nothing(tmp_path):
    """A slide, a good image and an unreadable one: one error naming the bad file, and not one
    tile or image imported (the slide is read first; its tiles must not stay behind). Then a
    mask of another size: the same."""
    from PIL import Image as PILImage

    from pathoseg.data.slides import TileSpec
    from pathoseg.server.services.imports import add_folder
    from pathoseg.server.storage import Image as ImageRow
    from pathoseg.server.storage import Project

    scans = tmp_path / "scans"
    scans.mkdir()
    synthetic_slide(scans)
    PILImage.fromarray(np.full((40, 60, 3), 200, np.uint8)).save(scans / "a.png")
    (scans / "b.png").write_bytes(b"\x89PNG not really")
    project = Project(tmp_path / "lab", create=True)
    with pytest.raises(PathosegError, match=r"b\.png"):
        add_folder(project, scans, tiles=TileSpec(side=128, max_tiles=2))
    with project.session() as s:
        assert list(s.scalars(select(ImageRow.name))) == []
    assert not list((project.root / "images").iterdir())

    (scans / "b.png").unlink()
    (scans / "masks").mkdir()
    PILImage.fromarray(np.zeros((10, 10), np.uint8)).save(scans / "masks" / "a.png")
    with pytest.raises(PathosegError, match=r"mask a\.png is 10x10, its image 60x40"):
        add_folder(project, scans, tiles=TileSpec(side=128, max_tiles=2))
    assert not list((project.root / "images").iterdir())
    (scans / "masks" / "a.png").unlink()
    assert add_folder(project, scans, tiles=TileSpec(side=128, max_tiles=2)) == 3  # two tiles and a.png

# -- stitching -------------------------------------------------------------------------------------------------------
def ideal_logits(labels: np.ndarray) -> np.ndarray:
    targets, _ = head_targets(labels, ("gland", "contour"))
    p = np.clip(targets, 0.02, 0.98)
    return np.log(p / (1 - p)).astype(np.float32)


def stitch(labels: np.ndarray, tmp_path: Path, tile: int, margin: int, cfg: InstanceConfig) -> np.ndarray:
    logits = ideal_logits(labels)
    grid = Grid(*labels.shape, tile=tile, margin=margin)
    stitch_cells(grid, lambda b: logits[:, b[0]:b[1], b[2]:b[3]], ("gland", "contour"), cfg, tmp_path)
    return stitched_labels(tmp_path, grid, resolve_glands(tmp_path, grid, cfg.min_size))


def test_glands_crossing_tile_borders_and_corners_come_out_whole(tmp_path):
    """Cores are 96 px (tile 128, margin 16): discs on a border, on a corner of four cells,
    and a long gland over three cells; each must be one gland, as on the whole map."""
    labels = np.zeros((288, 288), np.int32)
    yy, xx = np.mgrid[:288, :288]
    labels[np.hypot(yy - 48, xx - 96) < 30] = 1  # on a vertical border
    labels[np.hypot(yy - 96, xx - 192) < 34] = 2  # on the corner of four cells
    labels[(abs(yy - 240) < 14) & (xx > 20) & (xx < 270)] = 3  # over three cells
    labels[np.hypot(yy - 160, xx - 60) < 20] = 4  # inside one cell, next to a border
    cfg = InstanceConfig(min_size=50)
    stitched = stitch(labels, tmp_path, 128, 16, cfg)
    whole = decode_instances(dict(zip(("gland", "contour"), 1 / (1 + np.exp(-ideal_logits(labels))),
                                      strict=True)), cfg)
    assert stitched.max() == 4 == whole.max()
    for g in range(1, 5):
        ids = np.unique(stitched[labels == g])
        assert len(ids[ids > 0]) == 1, f"gland {g} came out in pieces: {ids}"
    assert object_metrics([object_tally(whole, stitched)])["f1"] == 1.0
    assert iou(stitched, whole) > 0.99


def test_two_touching_glands_split_along_a_tile_border_stay_two(tmp_path):
    """Their boundary (the contour channel) lies on the border between two cores."""
    labels = np.zeros((192, 192), np.int32)
    labels[40:150, 40:96] = 1
    labels[40:150, 96:160] = 2  # touches gland 1 exactly on the core border at x = 96
    stitched = stitch(labels, tmp_path, 128, 16, InstanceConfig(min_size=50))
    assert stitched.max() == 2
    assert object_metrics([object_tally(labels, stitched)])["f1"] == 1.0


def test_border_matching_needs_both_decoders_to_agree():
    own_left, own_right = np.array([1, 1, 1, 2, 0]), np.array([5, 5, 6, 6, 0])
    # The left decoder sees gland 1 go on into the right line on rows 0-1, the right one sees 5 go back.
    view_left, view_right = np.array([1, 1, 2, 2, 0]), np.array([1, 5, 6, 6, 0])
    assert sorted(border_matches(own_left, view_left, own_right, view_right)) == [(1, 5), (2, 6)]
    # Where the two decoders disagree everywhere (a boundary on the border), nothing merges.
    assert border_matches(own_left, np.array([7, 7, 7, 7, 0]), own_right, np.array([9, 9, 9, 9, 0])) == []


# -- slides through a model --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("upscale", [1, 2])
def test_tiled_slide_prediction_equals_per_image_prediction(tmp_path, upscale):
    """Tiles of 256 px (12 cells), blended and stitched, against the same pixels predicted as
    one image, at the model's resolution (upscale 1) and from a slide scanned at twice the
    resolution (0.31 µm/px, resampled to the model's 0.62). The reference is the slide's
    picture, glass included (a model sees the tissue's surroundings)."""
    path, canvas, truth = synthetic_slide(tmp_path, upscale=upscale)
    model = LocalModel().eval()
    reference, _ = predict_instances(model, canvas, PredictConfig(scale=1.0), InstanceConfig(min_size=50))
    run = run_slide(model, path, tmp_path / "out")
    assert run.cells == 12 and run.computed_windows == 12
    mask = tifffile.imread(run.outputs["mask"])
    assert mask.shape == (560 * upscale, 700 * upscale)
    labels = mask[::upscale, ::upscale]
    assert iou(labels, reference) >= 0.99, iou(labels, reference)
    assert object_metrics([object_tally(reference, labels)])["f1"] >= 0.95
    assert object_metrics([object_tally(truth, labels)])["f1"] >= 0.8  # the stand-in does find the glands
    assert run.glands == len(np.unique(mask)) - 1
    assert not (tmp_path / "out" / f"synth_{upscale}.tiles").exists()  # the tiles go once the outputs are written


@pytest.mark.slow
@pytest.mark.parametrize("upscale", [1, 2])
def test_slide_prediction_with_a_trained_model_equals_per_image_prediction(tiny_model, tmp_path, upscale):
    """A DeepLabV3+ trained for seconds, one window over the slide: the slide's reading,
    resampling, decoding and writing add nothing to the per-image prediction."""
    path, canvas, _ = synthetic_slide(tmp_path, upscale=upscale)
    model, ckpt = load_model(tiny_model)
    reference, _ = predict_instances(model, canvas, PredictConfig(scale=1.0), ckpt.instance_config())
    run = run_slide(tiny_model, path, tmp_path / "out", tile=1024)
    labels = tifffile.imread(run.outputs["mask"])[::upscale, ::upscale]
    assert iou(labels, reference) >= 0.99, iou(labels, reference)
    assert reference.max() > 0


def test_glas_image_on_a_slide_equals_per_image_prediction(glas_dir, tmp_path):
    image = read_image(glas_dir / "images" / "testA_1.png")
    canvas = on_glass(image, (image.shape[0] + 160, image.shape[1] + 200), (80, 100))
    path = write_pyramidal_tiff(tmp_path / "glas.tif", canvas, mpp=0.62)
    model = LocalModel().eval()
    reference, _ = predict_instances(model, canvas, PredictConfig(scale=1.0), InstanceConfig(min_size=50))
    run = run_slide(model, path, tmp_path / "out", tile=256)
    assert run.cells > 9 and reference.max() > 0
    assert iou(tifffile.imread(run.outputs["mask"]), reference) >= 0.99


def test_outputs_geojson_mask_and_overview_agree(tmp_path):
    path, canvas, _ = synthetic_slide(tmp_path)
    run = run_slide(LocalModel().eval(), path, tmp_path / "out")
    mask = tifffile.imread(run.outputs["mask"])
    with tifffile.TiffFile(run.outputs["mask"]) as tf:
        page = tf.pages[0]
        assert page.is_tiled and page.tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        x_res = page.tags["XResolution"].value
        assert 1e4 / (x_res[0] / x_res[1]) == pytest.approx(0.62, rel=1e-4)
        assert json.loads(page.description)["glands"] == run.glands
    with Slide(run.outputs["mask"]) as as_slide:  # the mask opens as a slide with the same resolution
        assert as_slide.mpp == pytest.approx(0.62, rel=1e-4)
    collection = json.loads(Path(run.outputs["geojson"]).read_text())
    features = collection["features"]
    assert collection["type"] == "FeatureCollection" and len(features) == run.glands > 0
    shapes = [shapely.geometry.shape(f["geometry"]) for f in features]
    assert all(s.is_valid and not s.is_empty for s in shapes)
    for f, s in zip(features, shapes, strict=True):
        props = f["properties"]
        assert props["classification"]["name"] == "Gland"
        assert props["measurements"]["Area µm^2"] == pytest.approx(s.area * 0.62**2, rel=1e-3)
        gland = mask == props["gland_id"]
        assert s.area == pytest.approx(gland.sum(), rel=0.05)  # level-0 pixels
    union = shapely.union_all(shapes)
    yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
    inside = shapely.contains_xy(union, xx + 0.5, yy + 0.5)
    assert iou(inside, mask) > 0.97
    overview = read_image(run.outputs["overview"])
    assert overview.shape == canvas.shape


def test_region_predicts_part_of_the_slide_in_slide_coordinates(tmp_path):
    path, _, _ = synthetic_slide(tmp_path)
    model = LocalModel().eval()
    full = tifffile.imread(run_slide(model, path, tmp_path / "full").outputs["mask"])
    run = run_slide(model, path, tmp_path / "part", region=Region(64, 96, 400, 320))
    part = tifffile.imread(run.outputs["mask"])
    assert part.shape == (320, 400)
    assert iou(part, full[96:416, 64:464]) > 0.97  # glands cut by the region's edge differ
    xs = [x for f in json.loads(Path(run.outputs["geojson"]).read_text())["features"]
          for x in np.asarray(shapely.geometry.shape(f["geometry"]).bounds)[[0, 2]]]
    assert min(xs) >= 64 and max(xs) <= 464  # level-0 coordinates of the whole slide


def test_a_stopped_slide_resumes_where_it_stopped(tmp_path):
    path, _, _ = synthetic_slide(tmp_path)
    model = LocalModel().eval()
    expected = tifffile.imread(run_slide(model, path, tmp_path / "once").outputs["mask"])

    def stop_after_five(k: int) -> None:
        if k == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_slide(model, path, tmp_path / "out", on_cell=stop_after_five)
    work = tmp_path / "out" / "synth_1.tiles"
    assert len(read_manifest(work)) == 5 and not (tmp_path / "out" / "synth_1.geojson").exists()
    run = run_slide(model, path, tmp_path / "out")
    assert run.computed_windows < run.cells  # the first five cells were not predicted again
    assert np.array_equal(tifffile.imread(run.outputs["mask"]), expected)


# -- bad input: one line naming the file, nothing written ---------------------------------------------------------
def _fails(argv: list[str], out: Path, capsys, *words: str) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("pathoseg: error:"), err
    assert all(w in err for w in words), err
    assert not out.exists(), "something was written"
    return err


def test_bad_slides_fail_with_one_line_and_write_nothing(untrained_model, tmp_path, capsys):
    out = tmp_path / "out"
    canvas = on_glass(synthetic_sample(1, SyntheticConfig(size=(96, 128)))[0], (300, 300), (50, 50))
    good = write_pyramidal_tiff(tmp_path / "good.tif", canvas, mpp=0.5, min_side=128)
    no_mpp = write_pyramidal_tiff(tmp_path / "nompp.tif", canvas, min_side=128)
    bad = tmp_path / "broken.svs"
    bad.write_bytes(b"not a slide at all" * 20)
    base = ["predict", str(untrained_model), "--out", str(out)]
    _fails([*base, str(bad)], out, capsys, str(bad), "not a readable slide")
    _fails([*base, str(no_mpp)], out, capsys, str(no_mpp), "no resolution metadata", "--mpp")
    _fails([*base, str(good), "--mpp", "20"], out, capsys, str(good), "outside 0.1–10")
    _fails([*base, str(good), "--mpp", "0.05"], out, capsys, "outside 0.1–10")
    _fails([*base, str(good), "--region", "200,200,200,50"], out, capsys, str(good), "outside the slide")
    _fails([*base, str(good), "--region", "10,10,abc"], out, capsys, str(good), "x,y,w,h")
    _fails([*base, str(good), "--tile", "64"], out, capsys, str(good), "--tile 64 is too small")
    # A good slide listed with a bad one: still nothing written.
    _fails([*base, str(good), str(no_mpp)], out, capsys, str(no_mpp))
    # --mpp says what the metadata lacks.
    assert main([*base, str(no_mpp), "--mpp", "0.5", "--tile", "256"]) == 0
    assert (out / "slides" / "nompp.geojson").is_file()


def test_old_checkpoint_of_unknown_data_needs_model_mpp_for_slides(tmp_path, capsys):
    model = build_model(ModelConfig(weights="none"))
    ckpt = Checkpoint.of(model, 1.0, split={"kind": "random", "seed": 0, "train": ["synth_000"], "test": {}})
    path = ckpt.save(tmp_path / "old.pt")
    slide = write_pyramidal_tiff(tmp_path / "s.tif", np.full((256, 256, 3), 200, np.uint8), mpp=0.5, min_side=128)
    out = tmp_path / "out"
    _fails(["predict", str(path), str(slide), "--out", str(out)], out, capsys, str(path), "--model-mpp")


# -- memory --------------------------------------------------------------------------------------------------------
_PEAK = """
import re, sys
from pathlib import Path
from pathoseg.cli import main
from pathoseg.engine.checkpoint import load_model

def hwm():  # this process's peak resident memory (ru_maxrss would include the parent's at fork)
    return int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))

load_model(sys.argv[2])  # torch, the model and the libraries: what any run costs before the slide
base = hwm()
rc = main(sys.argv[1:])
print("PEAK_KB", base, hwm())
sys.exit(rc)
"""


def sparse_slide(path: Path, side: int) -> Path:
    """A ``side`` x ``side`` slide, mostly glass, with the same two tissue patches whatever its size."""
    canvas = np.empty((side, side, 3), np.uint8)
    canvas[:] = GLASS
    for n, (y, x) in enumerate(((300, 400), (side - 700, side - 900))):
        canvas[y:y + 320, x:x + 400] = synthetic_sample(40 + n, SyntheticConfig(size=(320, 400)))[0]
    return write_pyramidal_tiff(path, canvas, mpp=0.62, tile=512, min_side=512)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads peak memory from /proc (Linux)")
def test_peak_memory_is_flat_in_slide_size(untrained_model, tmp_path):
    """A slide 4x the area (8192² vs 4096² px, the same tissue) costs less than 20% more peak
    memory, and what the slide itself adds (peak less the process after loading the model,
    ~1 GB of it torch) grows by less than 64 MB: a non-streaming writer would hold a 134 MB
    label mask or a 200 MB picture of the 8192² slide."""
    base, peak = {}, {}
    for side in (4096, 8192):
        slide = sparse_slide(tmp_path / f"s{side}.tif", side)
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run([sys.executable, "-c", _PEAK, "predict", str(untrained_model), str(slide), "--out",
                               str(tmp_path / f"out{side}"), "--tile", "256"], capture_output=True, text=True,
                              env=env, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        base[side], peak[side] = (int(v) for v in done.stdout.split("PEAK_KB")[-1].split()[:2])
        with tifffile.TiffFile(tmp_path / f"out{side}" / "slides" / f"s{side}.mask.tif") as tf:
            assert tf.pages[0].shape == (side, side) and len(tf.series[0].levels) > 1
    added = {side: peak[side] - base[side] for side in peak}
    assert peak[8192] < 1.2 * peak[4096], (peak, added)
    assert added[8192] < added[4096] + 64 * 1024, (peak, added)

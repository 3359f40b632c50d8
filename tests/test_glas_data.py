from __future__ import annotations

import shutil

import numpy as np
import pytest
from PIL import Image

from pathoseg.data import load_dataset
from pathoseg.data.glas import RELEASE_FOLDER, read_grades
from pathoseg.errors import PathosegError


def test_png_layout_counts_and_ids(glas_dir):
    data = load_dataset(glas_dir)
    assert data.kind == "glas-png"
    parts = [s.part for s in data]
    assert (parts.count("train"), parts.count("testA"), parts.count("testB")) == (85, 60, 20)
    total = 0
    for s in data:
        _, labels = s.load()
        total += len(np.unique(labels[labels > 0]))
    assert total == 1530
    # ids are kept as annotated: train_1 has seven glands with ids 1..7
    _, labels = data["train_1"].load()
    assert sorted(np.unique(labels).tolist()) == list(range(8))
    # testB_3: one id over several disconnected regions stays one id
    _, labels = data["testB_3"].load()
    assert np.unique(labels[labels > 0]).tolist() == [1]


def test_grades_are_parsed_from_cr_only_csv(glas_dir):
    grades = read_grades(glas_dir / "Grade.csv")
    assert len(grades) == 165
    assert set(grades.values()) == {"benign", "malignant"}
    assert grades["testA_1"] in ("benign", "malignant")


@pytest.fixture(scope="module")
def bmp_release(glas_dir, tmp_path_factory):
    """The original release layout (flat BMPs, 24-bit masks with R=G=B) for a few images."""
    root = tmp_path_factory.mktemp("release") / RELEASE_FOLDER
    root.mkdir()
    names = ["train_1", "train_2", "testA_1", "testB_3"]
    lines = (glas_dir / "Grade.csv").read_bytes().split(b"\r")
    keep = [lines[0]] + [ln for ln in lines[1:] if ln.split(b",")[0].decode() in names]
    (root / "Grade.csv").write_bytes(b"\r".join(keep))
    for n in names:
        Image.open(glas_dir / "images" / f"{n}.png").convert("RGB").save(root / f"{n}.bmp")
        ids = np.array(Image.open(glas_dir / "masks" / f"{n}_anno.png"))
        Image.fromarray(np.stack([ids] * 3, -1)).save(root / f"{n}_anno.bmp")
    return root, names


def test_bmp_release_matches_png(glas_dir, bmp_release):
    root, names = bmp_release
    png = load_dataset(glas_dir)
    for path in (root, root.parent):  # the release folder itself, or the folder holding it
        bmp = load_dataset(path)
        assert bmp.kind == "glas-bmp"
        assert sorted(bmp.names) == sorted(names)
        for n in names:
            a_img, a_lab = bmp[n].load()
            b_img, b_lab = png[n].load()
            assert np.array_equal(a_img, b_img)
            assert np.array_equal(a_lab, b_lab)
            assert bmp[n].grade == png[n].grade and bmp[n].part == png[n].part


def test_missing_mask_in_release_is_named(bmp_release, tmp_path):
    root, _ = bmp_release
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    (copy / "train_2_anno.bmp").unlink()
    with pytest.raises(PathosegError, match=r"train_2_anno\.bmp.*mask missing"):
        load_dataset(copy)


@pytest.mark.parametrize("content, problem", [
    (b"", "empty"),
    (b"file,patient\rtrain_1,1", "no 'name' column"),
    (b"name,patient ID,grade (GlaS)\rtrain_1,1, purple", "unknown grade"),
    (b"name,patient ID,grade (GlaS)\rtrain_1", "fields"),
])
def test_malformed_grade_csv(tmp_path, content, problem):
    path = tmp_path / "Grade.csv"
    path.write_bytes(content)
    with pytest.raises(PathosegError, match=problem) as exc:
        read_grades(path)
    assert "Grade.csv" in str(exc.value)

"""GlaS@MICCAI'2015: the original BMP release folder and the PNG layout of shared/data/glas.

Sirinukunwattana et al., "Gland segmentation in colon histology images: The GlaS
challenge contest", Medical Image Analysis 35 (2017).
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from pathoseg.data.samples import Sample, SampleSet
from pathoseg.errors import PathosegError

GLAS_MPP = 0.62  # GlaS at native resolution (20x, Zeiss MIRAX MIDI), per the challenge paper
RELEASE_FOLDER = "Warwick QU Dataset (Released 2016_07_08)"
_NAME = re.compile(r"^(train|testA|testB)_(\d+)$")
GRADES = ("benign", "malignant")


def split_is_glas(split: dict | None) -> bool:
    """True when a checkpoint's split names GlaS images only (train_N, testA_N, testB_N)."""
    if not split:
        return False
    names = [*split.get("train", []), *split.get("val", [])]
    names += [n for part in (split.get("test") or {}).values() for n in part]
    return bool(names) and all(_NAME.match(str(n)) for n in names)


def read_grades(path: Path) -> dict[str, str]:
    """name -> benign/malignant from Grade.csv (CR-only line endings, leading spaces tolerated)."""
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise PathosegError(f"cannot read grade table ({exc})", path) from None
    rows = list(csv.reader(io.StringIO(text.replace("\r\n", "\n").replace("\r", "\n"))))
    rows = [[c.strip() for c in r] for r in rows if any(c.strip() for c in r)]
    if not rows:
        raise PathosegError("grade table is empty", path)
    header = [h.lower() for h in rows[0]]
    if "name" not in header:
        raise PathosegError("grade table has no 'name' column", path)
    name_col = header.index("name")
    grade_cols = [i for i, h in enumerate(header) if h.startswith("grade")]
    if not grade_cols:
        raise PathosegError("grade table has no 'grade' column", path)
    grades: dict[str, str] = {}
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) <= max(name_col, grade_cols[0]):
            raise PathosegError(f"line {lineno} has {len(row)} fields, expected {len(header)}", path)
        grade = row[grade_cols[0]].lower()
        if grade not in GRADES:
            raise PathosegError(f"line {lineno}: unknown grade {row[grade_cols[0]]!r}", path)
        grades[row[name_col]] = grade
    return grades


def _part(name: str) -> str:
    m = _NAME.match(name)
    return m.group(1) if m else ""


def _sort_key(name: str) -> tuple[str, int, str]:
    m = _NAME.match(name)
    return (m.group(1), int(m.group(2)), "") if m else ("~", 0, name)


def find_release_root(root: Path) -> Path | None:
    """The folder that holds GlaS, whichever layout, or None when ``root`` is not GlaS."""
    for cand in (root, root / RELEASE_FOLDER):
        if (cand / "images").is_dir() and (cand / "masks").is_dir() and (cand / "Grade.csv").is_file():
            return cand
        if (cand / "Grade.csv").is_file() and any(cand.glob("*_anno.bmp")):
            return cand
    return None


def load_glas(root: str | Path) -> SampleSet:
    """Read GlaS from either layout; masks keep their instance ids."""
    root = Path(root)
    base = find_release_root(root)
    if base is None:
        raise PathosegError("not a GlaS folder (expected Grade.csv with images/ + masks/ or *.bmp)", root)
    grades = read_grades(base / "Grade.csv")
    png = (base / "images").is_dir()
    samples = []
    for name in sorted(grades, key=_sort_key):
        if png:
            image, mask = base / "images" / f"{name}.png", base / "masks" / f"{name}_anno.png"
        else:
            image, mask = base / f"{name}.bmp", base / f"{name}_anno.bmp"
        if not image.is_file():
            raise PathosegError(f"image listed in Grade.csv is missing (looked for {image.name})", image)
        if not mask.is_file():
            raise PathosegError(f"mask missing for image {image.name}", mask)
        samples.append(Sample(name, image, mask, part=_part(name), grade=grades[name]))
    return SampleSet(samples, base, "glas-png" if png else "glas-bmp", mpp=GLAS_MPP)

"""Schema migrations (Alembic): a project made by an earlier pathoseg upgrades in place."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from sqlalchemy import inspect, select

from pathoseg.data.synthetic import SyntheticConfig, synthetic_sample
from pathoseg.server.migrate import current_revision, head_revision
from pathoseg.server.services.masks import save_mask
from pathoseg.server.storage import Image, Mask, ModelVersion, Project, User

DUMP = Path(__file__).parent / "data" / "project_912216b.sql"  # a project as pathoseg 912216b left it


def _old_project(folder: Path) -> Path:
    for sub in ("images", "masks", "models", "predictions"):
        (folder / sub).mkdir(parents=True)
    con = sqlite3.connect(folder / "pathoseg.db")
    con.executescript(DUMP.read_text())
    con.close()
    return folder


def test_a_project_made_before_alembic_upgrades_in_place_and_keeps_its_rows(tmp_path):
    root = _old_project(tmp_path / "lab")
    project = Project(root)
    assert current_revision(project.engine) == head_revision()
    columns = {t: {c["name"] for c in inspect(project.engine).get_columns(t)} for t in ("images", "models", "jobs")}
    assert "grade" in columns["images"] and {"scores", "note"} <= columns["models"]
    assert "flag" in columns["images"] and "trained_by" in columns["models"] and "requested_by" in columns["jobs"]
    with project.session() as s:
        assert [i.name for i in s.scalars(select(Image).order_by(Image.id))] == ["img0", "img1", "img2"]
        masks = s.scalars(select(Mask).order_by(Mask.id)).all()
        assert [(m.source, m.version) for m in masks] == [("import", 1), ("import", 1), ("correction", 1)]
        assert masks[2].operations == {"split": 1} and masks[2].operation_log[0]["other"] == 2
        model = s.scalars(select(ModelVersion)).one()
        assert model.active and model.trained_on == [["img0", 1]] and model.scores is None
        assert {u.name: u.role for u in s.scalars(select(User))} == {"ana": "admin", "bo": "annotator"}
    # it works as a project of today: a new save claims version 2 with the same compare-and-set
    labels = synthetic_sample(951, SyntheticConfig(size=(48, 48)))[1]
    assert save_mask(project, 3, labels, 1, "bo", 3.0).mask_version == 2
    project.engine.dispose()
    again = Project(root)  # opening again changes nothing
    assert current_revision(again.engine) == head_revision()
    again.engine.dispose()


def test_a_new_project_is_stamped_at_the_newest_revision_and_processes_migrate_one_at_a_time(tmp_path):
    root = _old_project(tmp_path / "lab")
    opened, errors = [], []

    def open_it():
        try:
            opened.append(Project(root))
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=open_it) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(opened) == 4
    for p in opened:
        p.engine.dispose()
    fresh = Project(tmp_path / "new", create=True)
    assert current_revision(fresh.engine) == head_revision()
    with fresh.session() as s:
        assert s.scalars(select(Image)).all() == []
    fresh.engine.dispose()

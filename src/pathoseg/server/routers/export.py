"""Export (admins): masks, instance maps, GeoJSON and status.csv as one zip."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import Response

from pathoseg.server.deps import ADMIN_ONLY, Admin, ProjectDep
from pathoseg.server.services.export import export

router = APIRouter(prefix="/api", tags=["export"])


@router.get("/export", responses={**ADMIN_ONLY, 200: {"content": {"application/zip": {}}}})
def export_zip(u: Admin, project: ProjectDep) -> Response:
    with tempfile.TemporaryDirectory() as tmp:
        export(project, Path(tmp) / "export")
        archive = shutil.make_archive(str(Path(tmp) / "export"), "zip", Path(tmp) / "export")
        data = Path(archive).read_bytes()
    return Response(data, media_type="application/zip",
                    headers={"Content-Disposition": 'attachment; filename="pathoseg-export.zip"'})

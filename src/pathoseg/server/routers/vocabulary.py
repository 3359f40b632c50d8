"""The app's vocabularies and limits, as the server checks them: the editor reads them here
instead of keeping copies."""

from __future__ import annotations

from fastapi import APIRouter

from pathoseg.operations import EDITOR_OPERATIONS, GLAND_OPERATIONS
from pathoseg.server.deps import Annotator
from pathoseg.server.schemas import VocabularyOut
from pathoseg.server.storage import ROLES
from pathoseg.server.vocabulary import (
    IMAGE_FLAGS,
    MASK_KINDS,
    MAX_GLAND_ID,
    MAX_LOG,
    MAX_SECONDS,
    MAX_UPLOAD_BYTES,
    MAX_UPLOAD_PIXELS,
    MIN_IMAGE_SIDE,
    MIN_TISSUE_SHARE,
)

router = APIRouter(prefix="/api", tags=["vocabulary"])


@router.get("/vocabulary", response_model=VocabularyOut)
def vocabulary(u: Annotator) -> VocabularyOut:
    return VocabularyOut(operations=list(EDITOR_OPERATIONS), gland_operations=list(GLAND_OPERATIONS),
                         mask_kinds=list(MASK_KINDS), roles=list(ROLES), max_gland_id=MAX_GLAND_ID, max_log=MAX_LOG,
                         max_seconds=MAX_SECONDS, max_upload_bytes=MAX_UPLOAD_BYTES,
                         max_upload_pixels=MAX_UPLOAD_PIXELS, image_flags=list(IMAGE_FLAGS),
                         min_image_side=MIN_IMAGE_SIDE, min_tissue_share=MIN_TISSUE_SHARE)

"""What the API sends and receives (pydantic models; they make the OpenAPI schema at /docs)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, StringConstraints, Tag

from pathoseg.server.storage import MAX_ID, MAX_TOKEN_DAYS, ROLES, USER_NAME, Image, Job, User, aware
from pathoseg.server.vocabulary import (
    IMAGE_FLAGS,
    MASK_KINDS,
    MAX_GLAND_ID,
    MAX_LOG,
    MAX_OPERATION_KINDS,
    MAX_OPERATION_NAME,
    MAX_OPERATIONS,
    MAX_SECONDS,
    OPERATION_TYPES,
)


class ErrorOut(BaseModel):
    """Every error the API returns: 401, 403, 404, 409, 413, 422, 429, ..."""

    detail: str = Field(description="what went wrong, in one line")


class ImageOut(BaseModel):
    id: int
    name: str
    width: int
    height: int
    status: str
    uncertainty: float | None
    mask_version: int
    updated_by: str | None
    flag: str | None = Field(None, description="why it sorts last: " + ", ".join(IMAGE_FLAGS) + " (None: it may "
                                               "hold glands)")
    predicting: bool = Field(False, description="waiting for the active model's prediction (a prediction or "
                                                "retrain job is queued or running)")

    @classmethod
    def of(cls, i: Image, predicting: bool = False) -> ImageOut:
        return cls(id=i.id, name=i.name, width=i.width, height=i.height, status=i.status,
                   uncertainty=i.uncertainty, mask_version=i.mask_version, updated_by=i.updated_by, flag=i.flag,
                   predicting=predicting)


GlandId = Annotated[int, Field(ge=0, le=MAX_GLAND_ID)]
OperationType = Literal[OPERATION_TYPES]  # type: ignore[valid-type]


class OperationIn(BaseModel):
    """One entry of the editor's operation log."""

    model_config = ConfigDict(extra="forbid")
    type: OperationType = Field(description="what was done: " + ", ".join(OPERATION_TYPES))
    timestamp: datetime = Field(description="when (ISO 8601)")
    gland: GlandId | None = Field(None, description="the gland it was done to (its id in the editor then)")
    other: GlandId | None = Field(None, description="merge: the gland merged in; split: the new gland")


Counts = Annotated[dict[Annotated[str, StringConstraints(min_length=1, max_length=MAX_OPERATION_NAME)],
                        Annotated[int, Field(ge=0, le=MAX_OPERATIONS)]],
                   Field(max_length=MAX_OPERATION_KINDS), Tag("counts")]
Log = Annotated[list[OperationIn], Field(max_length=MAX_LOG), Tag("log")]


def _operations_form(value: object) -> str:
    return "log" if isinstance(value, list | tuple) else "counts"


class MaskIn(BaseModel):
    png_base64: str = Field(description="PNG of the mask, image-sized: an instance label map (one channel, 8 or 16 "
                                        "bit: 0 background, 1..N glands) or a binary mask (any non-zero value in "
                                        "any channel is gland; with transparent pixels in an alpha channel: the "
                                        "visible ones), whose connected components become the glands")
    kind: Literal[MASK_KINDS] = Field(  # type: ignore[valid-type]
        "auto", description="how to read the PNG: labels, binary, or auto (one channel with two or more different "
                            "non-zero values: labels; else binary)")
    base_version: int = Field(ge=0, lt=MAX_ID, description="the mask_version the editor loaded (conflict check)")
    seconds: float = Field(0.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False,
                           description="time spent on this correction")
    operations: Annotated[Counts | Log, Discriminator(_operations_form)] = Field(
        default_factory=dict,
        description=f'the edits made: the editor\'s log (at most {MAX_LOG} entries, e.g. [{{"type": "split", '
                    f'"timestamp": "2025-01-31T10:00:00Z", "gland": 3}}]; their counts per type are kept too) or '
                    f'counts by name (e.g. {{"brush": 3}})')
    approve: bool = False


class MaskOut(BaseModel):
    """What was logged with one saved mask version."""

    version: int
    source: str
    user: str | None
    seconds: float
    created_at: datetime
    operations: dict[str, int]
    operation_log: list[dict] | None


WORKER_ID = re.compile(r"[^\s()]+:\d+:[0-9a-f]{6}")  # host:pid:tag, as workers name themselves


class JobOut(BaseModel):
    """A queued, running, done or failed job; ``attempts`` counts the workers that claimed it
    (a job whose worker died is retried once)."""

    id: int
    kind: str
    status: str
    progress: float
    message: str
    attempts: int = 0
    worker: str | None = None
    created_at: datetime | None = None
    started_at: datetime | None = None
    heartbeat_at: datetime | None = None
    finished_at: datetime | None = None
    model_version: int | None = Field(None, description="the model version a train job made")
    requested_by: str | None = Field(None, description='who asked for it: a user, "auto" (a retrain after '
                                                       'corrections) or "upload" (a new image\'s prediction)')

    @classmethod
    def of(cls, j: Job, admin: bool = True) -> JobOut:
        """``admin``: with the worker's identity (host, process); annotators see "a worker"."""
        message = j.message if admin else WORKER_ID.sub("a worker", j.message or "")
        return cls(id=j.id, kind=j.kind, status=j.status, progress=j.progress, message=message,
                   attempts=j.attempts or 0, worker=j.worker if admin else None, created_at=aware(j.created_at),
                   started_at=aware(j.started_at), heartbeat_at=aware(j.heartbeat_at),
                   finished_at=aware(j.finished_at), model_version=j.model_version, requested_by=j.requested_by)


class ScoresOut(BaseModel):
    iou: float  # pooled pixel IoU
    f1: float  # GlaS object F1
    images: int  # validation images


class ModelOut(BaseModel):
    version: int
    active: bool
    trained_on: list
    created_at: datetime | None = None
    note: str | None = None  # why it is (not) active after its retrain, or where it was imported from
    trained_by: str | None = Field(None, description='who asked for the retrain that made it: a user, "auto" '
                                                     '(after corrections); "import": a registered checkpoint')
    # its scores on the project's current validation set; None when not scored on that set (only
    # scores on one set are ever shown side by side)
    scores: ScoresOut | None = None


Days = Annotated[int, Field(ge=1, le=MAX_TOKEN_DAYS, description="how long the token works, in days")]
UserName = Annotated[str, StringConstraints(pattern=USER_NAME.pattern)]


class UserOut(BaseModel):
    name: str
    role: str
    token_expires_at: datetime | None
    revoked: bool

    @classmethod
    def of(cls, u: User) -> UserOut:
        return cls(name=u.name, role=u.role, token_expires_at=u.expires, revoked=u.revoked)


class UserIn(BaseModel):
    name: UserName
    role: Literal[ROLES] = "annotator"  # type: ignore[valid-type]
    days: Days | None = Field(None, description="token lifetime (default: as long as the user's tokens live)")


class TokenIn(BaseModel):
    days: Days | None = Field(None, description="token lifetime (default: as long as the user's tokens live)")


class IssuedOut(BaseModel):
    """A new login token: shown this once (the server keeps only its hash)."""

    name: str
    role: str
    token: str
    token_expires_at: datetime


class VocabularyOut(BaseModel):
    """What the server accepts, for the editor: the operation names a log may hold (and the
    subset the simulated pathologist plans), mask kinds, roles and limits."""

    operations: list[str]
    gland_operations: list[str]
    mask_kinds: list[str]
    roles: list[str]
    max_gland_id: int  # 65535 marks unlabelled pixels in training
    max_log: int  # operation log entries per save
    max_seconds: float  # effort logged with one save
    max_upload_bytes: int
    max_upload_pixels: int
    image_flags: list[str]  # why an image sorts last
    min_image_side: int  # px; a shorter side is flagged "too small"
    min_tissue_share: float  # less tissue is flagged "no tissue"

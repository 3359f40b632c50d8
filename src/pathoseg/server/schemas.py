"""What the API sends and receives (pydantic models; they make the OpenAPI schema at /docs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints

from pathoseg.server.project import MAX_OPERATION_KINDS, MAX_OPERATION_NAME, MAX_OPERATIONS, MAX_SECONDS
from pathoseg.server.storage import MAX_ID, MAX_TOKEN_DAYS, USER_NAME, Image, Job, User


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

    @classmethod
    def of(cls, i: Image) -> ImageOut:
        return cls(id=i.id, name=i.name, width=i.width, height=i.height, status=i.status,
                   uncertainty=i.uncertainty, mask_version=i.mask_version, updated_by=i.updated_by)


class MaskIn(BaseModel):
    png_base64: str = Field(description="PNG of the mask, image-sized; any non-zero value in any channel is "
                                        "gland (with transparent pixels in an alpha channel: the visible ones)")
    base_version: int = Field(ge=0, lt=MAX_ID, description="the mask_version the editor loaded (conflict check)")
    seconds: float = Field(0.0, ge=0, le=MAX_SECONDS, allow_inf_nan=False,
                           description="time spent on this correction")
    operations: dict[Annotated[str, StringConstraints(min_length=1, max_length=MAX_OPERATION_NAME)],
                     Annotated[int, Field(ge=0, le=MAX_OPERATIONS)]] = Field(
        default_factory=dict, max_length=MAX_OPERATION_KINDS, description='edits made, e.g. {"brush": 3}')
    approve: bool = False


class JobOut(BaseModel):
    id: int
    kind: str
    status: str
    progress: float
    message: str

    @classmethod
    def of(cls, j: Job) -> JobOut:
        return cls(id=j.id, kind=j.kind, status=j.status, progress=j.progress, message=j.message)


class ModelOut(BaseModel):
    version: int
    val_iou: float | None
    active: bool
    trained_on: list


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
    role: Literal["admin", "annotator"] = "annotator"
    days: Days | None = Field(None, description="token lifetime (default: the server's --token-days)")


class TokenIn(BaseModel):
    days: Days | None = Field(None, description="token lifetime (default: the server's --token-days)")


class IssuedOut(BaseModel):
    """A new login token: shown this once (the server keeps only its hash)."""

    name: str
    role: str
    token: str
    token_expires_at: datetime

"""The project's database (SQLAlchemy; SQLite by default) and its files on disk.

Project directory:

    pathoseg.db                      SQLite database (unless --db names another)
    images/<name>.png                imported images (re-encoded PNG, never the upload as is)
    masks/<name>/v<k>.png            every saved mask version (0/255), never overwritten
    .../.<file>.<16 hex>.tmp         a file being saved: written first, committed, then renamed
                                     into place; leftovers are settled when the project opens
    models/v<k>.pt                   every trained model version
    predictions/v<k>/<name>.png      gland probability x 255 per model version
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    create_engine,
    select,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from pathoseg.errors import PathosegError

MAX_ID = 2**31 - 1  # the largest id or version every supported database stores (PostgreSQL INTEGER)
STAGED = re.compile(r"^\.(?P<final>.+)\.[0-9a-f]{16}\.tmp$")
STALE_SECONDS = 600  # an uncommitted staged file this old belongs to a save that died


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)


class Image(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="new")  # new/predicted/corrected/approved
    uncertainty: Mapped[float | None] = mapped_column(Float, nullable=True)
    mask_version: Mapped[int] = mapped_column(Integer, default=0)  # 0 = no saved mask yet
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    masks: Mapped[list[Mask]] = relationship(back_populates="image", order_by="Mask.version")


class Mask(Base):
    """One saved mask version with the effort that produced it."""

    __tablename__ = "masks"
    __table_args__ = (Index("uq_masks_image_version", "image_id", "version", unique=True),)
    id: Mapped[int] = mapped_column(primary_key=True)
    image_id: Mapped[int] = mapped_column(ForeignKey("images.id"))
    version: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))  # import / correction
    user: Mapped[str | None] = mapped_column(String(64), nullable=True)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    operations: Mapped[dict] = mapped_column(JSON, default=dict)  # e.g. {"brush": 3, "polygon": 1}
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    image: Mapped[Image] = relationship(back_populates="masks")


class ModelVersion(Base):
    __tablename__ = "models"
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    val_iou: Mapped[float | None] = mapped_column(Float, nullable=True)
    trained_on: Mapped[list] = mapped_column(JSON, default=list)  # [[image name, mask version], ...]
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)


class Job(Base):
    __tablename__ = "jobs"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # train / predict
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued/running/done/failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Project:
    """Paths and the database of one project directory."""

    def __init__(self, root: str | Path, db_url: str | None = None, create: bool = False) -> None:
        self.root = Path(root).resolve()
        if create:
            for sub in ("images", "masks", "models", "predictions"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
        elif not (self.root / "images").is_dir():
            raise PathosegError("not a pathoseg project (run: pathoseg project init DIR)", self.root)
        url = db_url or f"sqlite:///{self.root / 'pathoseg.db'}"
        args = {"check_same_thread": False, "timeout": 30} if url.startswith("sqlite") else {}
        self.engine = create_engine(url, connect_args=args)
        Base.metadata.create_all(self.engine)
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._unique_mask_versions()
        self.settle_staged_files()

    def _unique_mask_versions(self) -> None:
        """Databases made before the unique (image, version) index get it now."""
        (index,) = (i for i in Mask.__table__.indexes if i.name == "uq_masks_image_version")
        try:
            index.create(self.engine, checkfirst=True)
        except IntegrityError:
            warnings.warn(f"{self.root}: the masks table has duplicate (image, version) rows from an older "
                          "pathoseg; new saves are still checked, but remove the duplicates to get the "
                          "database's own guard", stacklevel=3)

    def session(self) -> Session:
        return self.sessions()

    def image_path(self, name: str) -> Path:
        return self.root / "images" / f"{name}.png"

    def mask_path(self, name: str, version: int) -> Path:
        return self.root / "masks" / name / f"v{version}.png"

    def model_path(self, version: int) -> Path:
        return self.root / "models" / f"v{version}.pt"

    def prediction_path(self, model_version: int, name: str) -> Path:
        """The model's gland probability x 255."""
        return self.root / "predictions" / f"v{model_version}" / f"{name}.png"

    def instances_path(self, model_version: int, name: str) -> Path:
        """The model's glands (label map), from pathoseg's instance decoder."""
        return self.root / "predictions" / f"v{model_version}" / "instances" / f"{name}.png"

    def active_model(self, session: Session) -> ModelVersion | None:
        return session.scalars(select(ModelVersion).where(ModelVersion.active)).first()

    @staticmethod
    def staged_path(final: Path) -> Path:
        """Where a new file is written before its database row commits (then renamed to ``final``)."""
        return final.parent / f".{final.name}.{secrets.token_hex(8)}.tmp"

    def settle_staged_files(self, stale_after: float = STALE_SECONDS) -> None:
        """Finish or drop the staged files of saves that died: a file whose row committed is
        renamed into place; one whose row never committed is deleted once it is ``stale_after``
        seconds old (a younger one may be a save in flight in another process)."""
        staged = [*(self.root / "images").glob(".*.tmp"), *(self.root / "masks").glob("*/.*.tmp")]
        if not staged:
            return
        with self.session() as s:
            for tmp in staged:
                match = STAGED.match(tmp.name)
                if match is None:
                    continue
                final = tmp.parent / match["final"]
                try:
                    if not final.exists() and self._committed(s, final):
                        os.replace(tmp, final)
                    elif time.time() - tmp.stat().st_mtime > stale_after:
                        tmp.unlink()
                except FileNotFoundError:  # another process settled it first
                    pass

    def _committed(self, s: Session, final: Path) -> bool:
        """Whether the database has the row that ``final`` belongs to."""
        if final.parent == self.root / "images":
            return s.scalars(select(Image.id).where(Image.name == final.name.removesuffix(".png"))).first() is not None
        version = re.fullmatch(r"v(\d+)\.png", final.name)
        if final.parent.parent != self.root / "masks" or version is None or int(version[1]) > MAX_ID:
            return False
        return s.scalars(select(Mask.id).join(Image).where(Image.name == final.parent.name,
                                                           Mask.version == int(version[1]))).first() is not None


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_user(project: Project, name: str, admin: bool = False) -> str:
    """Create a user and return their login token (shown once; only its hash is stored)."""
    token = secrets.token_urlsafe(24)
    with project.session() as s:
        if s.scalars(select(User).where(User.name == name)).first():
            raise PathosegError(f"user {name!r} exists already")
        s.add(User(name=name, token_hash=hash_token(token), is_admin=admin))
        s.commit()
    return token


def user_for_token(session: Session, token: str) -> User | None:
    return session.scalars(select(User).where(User.token_hash == hash_token(token))).first()

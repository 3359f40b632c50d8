"""The project's database (SQLAlchemy; SQLite by default) and its files on disk.

Users have a role (``admin`` or ``annotator``) and one login token at a time, stored only as
its SHA-256 hash, with an expiry date; a token can be revoked and a new one issued.

Project directory:

    pathoseg.db                      SQLite database (unless --db names another)
    images/<name>.png                imported images (re-encoded PNG, never the upload as is)
    masks/<name>/v<k>.png            every saved mask version, never overwritten: an instance label
                                     map (0 background, 1..N; 16-bit when N > 255); older
                                     projects' binary 0/255 masks are read as their components
    .../.<file>.<16 hex>.tmp         a file being saved: written first, committed, then renamed
                                     into place; leftovers are settled when the project opens
    models/v<k>.pt                   every trained model version (staged and renamed like masks)
    predictions/v<k>/<name>.png      gland probability x 255 per model version
    predictions/v<k>/instances/<name>.png   the model's glands (label map) per model version
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
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
    func,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship, sessionmaker

from pathoseg.errors import PathosegError
from pathoseg.server.migrate import migrate

MAX_ID = 2**31 - 1  # the largest id or version every supported database stores (PostgreSQL INTEGER)
STAGED = re.compile(r"^\.(?P<final>.+)\.[0-9a-f]{16}\.tmp$")
STALE_SECONDS = 600  # an uncommitted staged file this old belongs to a save that died
ROLES = ("admin", "annotator")
DEFAULT_TOKEN_DAYS = 90
MAX_TOKEN_DAYS = 3650
USER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")


def now() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    pass


class User(Base):
    """A person who logs in. Admins also train, activate models, export, upload and manage
    users; annotators read, save masks and approve."""

    __tablename__ = "users"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)  # SHA-256 of the token; never the token
    role: Mapped[str] = mapped_column(String(16), default="annotator", server_default="annotator")
    token_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    token_revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    token_days: Mapped[int | None] = mapped_column(Integer, nullable=True)  # their tokens' lifetime (None: default)

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    @property
    def expires(self) -> datetime | None:
        return aware(self.token_expires_at)

    @property
    def revoked(self) -> bool:
        return self.token_revoked_at is not None


class Image(Base):
    __tablename__ = "images"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    width: Mapped[int] = mapped_column(Integer)
    height: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="new")  # new/predicted/corrected/approved
    uncertainty: Mapped[float | None] = mapped_column(Float, nullable=True)
    uncertainty_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the model it came from
    mask_version: Mapped[int] = mapped_column(Integer, default=0)  # 0 = no saved mask yet
    updated_by: Mapped[str | None] = mapped_column(String(64), nullable=True)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    grade: Mapped[str | None] = mapped_column(String(32), nullable=True)  # e.g. GlaS benign / malignant
    flag: Mapped[str | None] = mapped_column(String(32), nullable=True)  # why it sorts last (vocabulary.IMAGE_FLAGS)
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
    operations: Mapped[dict] = mapped_column(JSON, default=dict)  # counts per type, e.g. {"split": 1, "delete": 2}
    # the editor's log: [{"type": "split", "timestamp": ISO time, "gland": 3, "other": 7}, ...]
    operation_log: Mapped[list | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    image: Mapped[Image] = relationship(back_populates="masks")


class ModelVersion(Base):
    """A trained (or imported) model. At most one is active (a partial unique index), so two
    activations at the same moment cannot leave two active versions."""

    __tablename__ = "models"
    __table_args__ = (Index("uq_models_one_active", "active", unique=True,
                            sqlite_where=text("active"), postgresql_where=text("active")),)
    id: Mapped[int] = mapped_column(primary_key=True)
    version: Mapped[int] = mapped_column(Integer, unique=True)
    val_iou: Mapped[float | None] = mapped_column(Float, nullable=True)
    trained_on: Mapped[list] = mapped_column(JSON, default=list)  # [[image name, mask version], ...]
    active: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    # its pooled IoU and object F1 on the project's validation set, and which set that was:
    # {"digest": ..., "iou": ..., "f1": ..., "images": n} (pathoseg.server.services.validation)
    scores: Mapped[dict | None] = mapped_column(JSON, nullable=True)
    note: Mapped[str | None] = mapped_column(String(500), nullable=True)  # why it is (not) active after training
    trained_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # its retrain's requester; "import"


class Job(Base):
    """The job queue (see ``pathoseg.server.services.queue``): a worker claims a queued job by setting
    it running under its id, heartbeats it, and finishes it. At most one job of each kind is
    queued at a time (a partial unique index)."""

    __tablename__ = "jobs"
    __table_args__ = (Index("uq_jobs_one_queued", "kind", unique=True,
                            sqlite_where=text("status = 'queued'"), postgresql_where=text("status = 'queued'")),)
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))  # train / predict
    status: Mapped[str] = mapped_column(String(16), default="queued")  # queued/running/done/failed
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    message: Mapped[str] = mapped_column(String(500), default="")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=now)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")  # claims so far
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)  # who runs it (host:pid:tag)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)  # database clock
    model_version: Mapped[int | None] = mapped_column(Integer, nullable=True)  # the version a train job made
    requested_by: Mapped[str | None] = mapped_column(String(64), nullable=True)  # a user's name, "auto", "upload"


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
        self.db_url = db_url
        self.engine = create_engine(url, connect_args=args)
        migrate(self.engine, Base.metadata, self.root / ".pathoseg-migrate.lock")
        self.sessions = sessionmaker(self.engine, expire_on_commit=False)
        self.settle_staged_files()

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

    def activate_model(self, version: int) -> bool:
        """Make ``version`` the one active model (rollback or forward); False when there is no
        such version. Retried when another activation commits at the same moment."""
        for _ in range(10):
            with self.session() as s:
                if s.scalars(select(ModelVersion.id).where(ModelVersion.version == version)).first() is None:
                    return False
                try:
                    lock_models(s)
                    s.execute(update(ModelVersion).where(ModelVersion.active, ModelVersion.version != version)
                              .values(active=False))
                    s.execute(update(ModelVersion).where(ModelVersion.version == version).values(active=True))
                    s.commit()
                    return True
                except IntegrityError:  # another version became active meanwhile: once more
                    s.rollback()
        raise PathosegError(f"could not activate model version {version}: other activations keep interfering")

    @staticmethod
    def staged_path(final: Path) -> Path:
        """Where a new file is written before its database row commits (then renamed to ``final``)."""
        return final.parent / f".{final.name}.{secrets.token_hex(8)}.tmp"

    def settle_staged_files(self, stale_after: float = STALE_SECONDS) -> None:
        """Finish or drop the staged files of saves that died: a file whose row committed is
        renamed into place; one whose row never committed is deleted once it is ``stale_after``
        seconds old (a younger one may be a save in flight in another process)."""
        staged = [*(self.root / "images").glob(".*.tmp"), *(self.root / "masks").glob("*/.*.tmp"),
                  *(self.root / "models").glob(".*.tmp"), *(self.root / "models").glob(".*.pt")]
        if not staged:
            return
        with self.session() as s:
            for tmp in staged:
                match = STAGED.match(tmp.name)
                if match is None:  # a checkpoint's own half-written temporary file (models/.v3.pt.*.pt)
                    try:
                        if tmp.parent.name == "models" and time.time() - tmp.stat().st_mtime > stale_after:
                            tmp.unlink()
                    except FileNotFoundError:  # its save finished (or another process settled it)
                        pass
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
        if final.parent == self.root / "models":
            version = re.fullmatch(r"v(\d+)\.pt", final.name)
            return version is not None and int(version[1]) <= MAX_ID and s.scalars(
                select(ModelVersion.id).where(ModelVersion.version == int(version[1]))).first() is not None
        version = re.fullmatch(r"v(\d+)\.png", final.name)
        if final.parent.parent != self.root / "masks" or version is None or int(version[1]) > MAX_ID:
            return False
        return s.scalars(select(Mask.id).join(Image).where(Image.name == final.parent.name,
                                                           Mask.version == int(version[1]))).first() is not None


def lock_models(session: Session) -> None:
    """Lock every model version row, in version order (PostgreSQL; SQLite locks the whole
    database on the first write anyway), so that activations and finishing retrains take
    their turns instead of deadlocking."""
    session.execute(select(ModelVersion.id).order_by(ModelVersion.version).with_for_update()).all()


def db_now(session: Session) -> datetime:
    """The database's clock (UTC): heartbeats are stamped and judged by it, so workers on other
    machines with skewed clocks agree on which job is dead."""
    return aware(session.scalar(select(func.current_timestamp()))).astimezone(UTC)


def aware(moment: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything pathoseg stores is UTC."""
    return moment.replace(tzinfo=UTC) if moment is not None and moment.tzinfo is None else moment


class TokenError(PathosegError):
    """A token that does not log anyone in: unknown, expired or revoked."""


class UserExists(PathosegError):
    """The name is taken."""


class NoSuchUser(PathosegError):
    """No user has that name."""


@dataclass(frozen=True)
class Issued:
    """A newly issued token (shown once) and when it expires."""

    name: str
    role: str
    token: str
    expires: datetime


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _days(days: int) -> timedelta:
    if isinstance(days, bool) or not isinstance(days, int) or not 1 <= days <= MAX_TOKEN_DAYS:
        raise PathosegError(f"a token lasts 1 to {MAX_TOKEN_DAYS} days, not {days!r:.40}")
    return timedelta(days=days)


def _find(session: Session, name: str) -> User:
    user = session.scalars(select(User).where(User.name == name)).first()
    if user is None:
        raise NoSuchUser(f"no user named {name!r}")
    return user


def add_user(project: Project, name: str, role: str = "annotator", days: int = DEFAULT_TOKEN_DAYS) -> Issued:
    """Create a user with a token valid for ``days`` days."""
    if not USER_NAME.match(name or ""):
        raise PathosegError(f"user name {name!r:.80} not allowed: 1 to 64 letters, digits, '.', '_', '@' or '-'")
    if role not in ROLES:
        raise PathosegError(f"role must be one of {', '.join(ROLES)}, not {role!r:.40}")
    lifetime = _days(days)
    token = secrets.token_urlsafe(24)
    with project.session() as s:
        if s.scalars(select(User).where(User.name == name)).first():
            raise UserExists(f"user {name!r} exists already")
        user = User(name=name, token_hash=hash_token(token), role=role, token_expires_at=now() + lifetime,
                    token_days=days)
        s.add(user)
        try:
            s.commit()
        except IntegrityError:
            s.rollback()
            if s.scalars(select(User).where(User.name == name)).first():  # added at the same moment
                raise UserExists(f"user {name!r} exists already") from None
            raise
        return Issued(name, role, token, user.expires)


def reissue_token(project: Project, name: str, days: int | None = None) -> Issued:
    """A new token for ``name`` (also after a revocation); the old one stops working. It lives
    ``days`` days, or as long as the user's tokens were given to live (``days`` then becomes
    the user's lifetime)."""
    token = secrets.token_urlsafe(24)
    with project.session() as s:
        user = _find(s, name)
        days = days if days is not None else user.token_days or DEFAULT_TOKEN_DAYS
        lifetime = _days(days)
        user.token_hash, user.token_expires_at, user.token_revoked_at = hash_token(token), now() + lifetime, None
        user.token_days = days
        s.commit()
        return Issued(user.name, user.role, token, user.expires)


class LastAdmin(PathosegError):
    """Revoking this token would leave no admin able to log in."""


def revoke_token(project: Project, name: str, force: bool = False) -> User:
    """``name``'s token stops working now (``reissue_token`` gives them a new one). The last
    admin with a working token keeps it unless ``force``: without one nobody can manage users,
    retrain or export through the app (the command line still can)."""
    with project.session() as s:
        user = _find(s, name)
        working = [u for u in s.scalars(select(User).where(User.role == "admin", User.token_revoked_at.is_(None)))
                   if u.expires is None or u.expires > now()]
        if user.is_admin and [u.name for u in working] == [user.name] and not force:
            raise LastAdmin(f"{name} is the last admin with a working token: revoking it leaves nobody who can "
                            "manage the project in the app; revoke with --force (API: ?force=true) if you mean it")
        if user.token_revoked_at is None:
            user.token_revoked_at = now()
            s.commit()
        return user


def list_users(project: Project) -> list[User]:
    with project.session() as s:
        return list(s.scalars(select(User).order_by(User.name)))


def user_for_token(session: Session, token: str) -> User | None:
    """The user whose token this is (expired or revoked ones too); ``authenticate`` checks those."""
    return session.scalars(select(User).where(User.token_hash == hash_token(token))).first()


def authenticate(session: Session, token: str, at: datetime | None = None) -> User:
    """The user ``token`` logs in, or a TokenError saying why not."""
    user = user_for_token(session, token) if token else None
    if user is None:
        raise TokenError("unknown token")
    if user.revoked:
        raise TokenError(f"the token of {user.name} was revoked; ask an admin for a new one")
    expires = user.expires
    if expires is not None and expires <= (at or now()):
        raise TokenError(f"the token of {user.name} expired on {expires:%Y-%m-%d}; ask an admin for a new one")
    return user

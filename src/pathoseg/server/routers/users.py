"""Users: who am I (anyone), and user management (admins): add, list, revoke, new token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, HTTPException
from fastapi import Path as PathParam

from pathoseg.server.deps import ADMIN_ONLY, BAD_BODY, NOT_FOUND, Admin, Annotator, ConfigDep, ProjectDep
from pathoseg.server.schemas import ErrorOut, IssuedOut, TokenIn, UserIn, UserOut
from pathoseg.server.storage import (
    USER_NAME,
    Issued,
    LastAdmin,
    NoSuchUser,
    UserExists,
    add_user,
    list_users,
    reissue_token,
    revoke_token,
)

router = APIRouter(prefix="/api", tags=["users"])
Name = Annotated[str, PathParam(pattern=USER_NAME.pattern, description="a user name")]


def issued_out(issued: Issued) -> IssuedOut:
    return IssuedOut(name=issued.name, role=issued.role, token=issued.token, token_expires_at=issued.expires)


@router.get("/me")
def me(u: Annotator) -> dict:
    return {"name": u.name, "is_admin": u.is_admin}


@router.get("/users/me", response_model=UserOut)
def whoami(u: Annotator) -> UserOut:
    """The logged-in user: role and when their token expires."""
    return UserOut.of(u)


@router.get("/users", response_model=list[UserOut], responses=ADMIN_ONLY)
def users(u: Admin, project: ProjectDep) -> list[UserOut]:
    return [UserOut.of(x) for x in list_users(project)]


@router.post("/users", response_model=IssuedOut, status_code=201,
             responses={**ADMIN_ONLY, **BAD_BODY, 409: {"model": ErrorOut, "description": "the name is taken"}})
def create(body: UserIn, u: Admin, project: ProjectDep, cfg: ConfigDep) -> IssuedOut:
    """Add a user; the answer holds their token, shown this once."""
    try:
        return issued_out(add_user(project, body.name, body.role, body.days or cfg.token_days))
    except UserExists as exc:
        raise HTTPException(409, str(exc)) from None


@router.post("/users/{name}/token", response_model=IssuedOut,
             responses={**ADMIN_ONLY, **NOT_FOUND, **BAD_BODY})
def new_token(name: Name, u: Admin, project: ProjectDep, cfg: ConfigDep,
              body: Annotated[TokenIn | None, Body()] = None) -> IssuedOut:
    """A new token for ``name`` (also after a revocation); their old token stops working."""
    try:
        return issued_out(reissue_token(project, name, body.days if body else None))
    except NoSuchUser as exc:
        raise HTTPException(404, str(exc)) from None


@router.post("/users/{name}/revoke", response_model=UserOut,
             responses={**ADMIN_ONLY, **NOT_FOUND, 409: {"model": ErrorOut, "description": "the last admin's token"}})
def revoke(name: Name, u: Admin, project: ProjectDep, force: bool = False) -> UserOut:
    """``name``'s token stops working now (the last admin's only with ``force=true``: 409 otherwise)."""
    try:
        return UserOut.of(revoke_token(project, name, force))
    except NoSuchUser as exc:
        raise HTTPException(404, str(exc)) from None
    except LastAdmin as exc:
        raise HTTPException(409, str(exc)) from None

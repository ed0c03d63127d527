"""What every route of the HTTP API shares: its dependencies (the token's user `Me`, a worker token's credential
`WorkerMe`, the JobManager `Manager`), the
error answers each operation documents (`answers`), and how an answer shortens what it repeats (`clip`, `first_line`).

renderfarm.core (the API) and renderfarm.page (the page's routes) both build on this module; it imports neither.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from renderfarm.jobs import JobManager
from renderfarm.tokens import Authenticator, TokenUser, TokenWorker, WorkerAuthenticator

MAX_BODY = 1_000_000  # bytes: a scene is a few KB; anything this big is a mistake or an attack
# bytes: a worker's upload (renderfarm.worker_api). An HD PNG from Blender is a few MB; 8-bit RGBA at the largest
# size a profile allows (8192x8192) can be 256 MB uncompressed, but no profile renders that big by default.
MAX_IMAGE = 64 * 1024 * 1024
ECHO = 80  # characters: the most of a submitted value (or of a path id) an error answer repeats


# -- dependencies: the app keeps its JobManager, schema and authenticator in app.state (renderfarm.core.create_app) --
def get_manager(request: Request) -> JobManager:
    """The app's JobManager, once the schema is there (503 while Postgres is away)."""
    request.app.state.schema.ensure()
    manager: JobManager = request.app.state.manager
    return manager


Manager = Annotated[JobManager, Depends(get_manager)]
bearer = HTTPBearer(auto_error=False, description="the user's API token, made by `invoke seed-credits`")


def bearer_token(request: Request, credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The request's bearer token, if any; with one, the schema is made sure of first (its lookup needs the tables)."""
    token = credentials.credentials if credentials is not None else None
    if token:
        request.app.state.schema.ensure()
    return token


def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> TokenUser:
    """The user whose token the request carries: 401 without one (before any lookup), or with an unknown one."""
    authenticator: Authenticator = request.app.state.authenticator
    return authenticator.verify(bearer_token(request, credentials))


Me = Annotated[TokenUser, Depends(current_user)]


def current_worker_credential(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> TokenWorker:
    """The worker credential whose token the request carries (renderfarm.worker_api's routes): 401 without one,
    or with an unknown or revoked one."""
    authenticator: WorkerAuthenticator = request.app.state.worker_authenticator
    return authenticator.verify(bearer_token(request, credentials))


WorkerMe = Annotated[TokenWorker, Depends(current_worker_credential)]


# -- error bodies: one model per kind of answer, so the schema tells a client what each status carries ---------
class ErrorOut(BaseModel):
    detail: str = Field(description="what was refused and why, with the command to run next where there is one")


class InsufficientOut(ErrorOut):
    balance: int
    price: int


class NotReadyOut(ErrorOut):
    state: str = Field(description="the job's state (the image exists only once it is finished)")


class StaleOut(ErrorOut):
    state: str = Field(description="the job's state now: the attempt named is no longer its current one")


class UnavailableOut(ErrorOut):
    service: Literal["database", "redis", "storage"] = Field(
        description="which service does not answer (storage: the API's renders folder, for a worker's upload)"
    )


class FieldError(BaseModel):
    loc: list[str | int] = Field(description="where the value is: body, then field names and list indexes")
    msg: str
    type: str
    input: str | None = Field(default=None, description=f"a short preview of the value (at most {ECHO} characters)")
    ctx: dict[str, str | int | float | bool] | None = Field(default=None, description="the limit it broke")


class ValidationOut(BaseModel):
    detail: list[FieldError]


def answers(*statuses: int, stale: bool = False, image: bool = False) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of an operation: each status it can answer besides its success, with its body.
    stale: its 409 is a worker's stale attempt (StaleOut), not an image that is not ready. image: its body is a
    worker's image (413 past MAX_IMAGE; 422 for an image that is not the job's)."""
    retry = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "string"}}}
    known: dict[int, dict[str, Any]] = {
        400: {"model": ErrorOut, "description": "the body cannot be read (not UTF-8 text)"},
        401: {
            "model": ErrorOut,
            "description": "no API token, or an unknown one",
            "headers": {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}},
        },
        402: {"model": InsufficientOut, "description": "too few credits for an HD render: nothing queued or charged"},
        403: {"model": ErrorOut, "description": "the token belongs to another user"},
        404: {"model": ErrorOut, "description": "no such job (or not the token's user's), or no such user"},
        409: {"model": NotReadyOut, "description": "the job is not finished: no image yet"},
        413: {"model": ErrorOut, "description": f"request body over {MAX_BODY} bytes"},
        415: {"model": ErrorOut, "description": "the body is not image/png"},
        422: {"model": ValidationOut, "description": "invalid input: each field named, values shortened"},
        503: {"model": UnavailableOut, "description": "Redis or Postgres does not answer", "headers": retry},
    }
    if stale:
        known[409] = {"model": StaleOut, "description": "the attempt is stale: the job moved on without this worker"}
    if image:
        known[413] = {"model": ErrorOut, "description": f"image over {MAX_IMAGE} bytes"}
        known[422] = {"model": ValidationOut, "description": "invalid input, or an image that is not the job's"}
    # Error bodies are JSON whatever the operation's own media type (a PNG, an event stream): FastAPI files a
    # "model" under the route's media type, so each one is also named under application/json explicitly.
    return {
        status: {**known[status], "content": {"application/json": {"schema": _ref(known[status]["model"])}}}
        for status in statuses
    }


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


# -- what an answer or a log line repeats -------------------------------------------------------------------------
def clip(text: str, limit: int = ECHO) -> str:
    """text, cut to `limit` characters with "…" marking the cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (at most 300 characters): what a log line says of a failure."""
    return (str(exc).strip().splitlines() or [""])[0][:300]

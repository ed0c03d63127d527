"""The API's routes for render workers (`/worker/...`): how a worker on any host takes part in a job without any
credential for the ledger, the database or the images folder.

A worker holds a worker token (renderfarm.tokens, made by `invoke worker-config`) and a Redis user that reaches
rq's keys only (provisioner.redis_acl). It takes an rq job off pq or sq with that Redis user, and everything else
goes through these routes, which call the JobManager on the stack's side:

- `claim`: it has taken the rq job and is getting ready (the orphan rescue waits for it);
- `start`: the job's next attempt begins, fenced by the rq job that carries it; the answer is the attempt number,
  the quality, the scene and the heartbeat TTL (the server's: a worker's clock never matters);
- `heartbeat`, then one of `image` (the PNG, checked to be a whole PNG of the job's size, stored by the API and the
  job finished), `failed` or `requeue` (preempted or interrupted: retried on sq).

Every call after `start` names the attempt (the fencing token): an attempt that is no longer the job's current one
is 409 and changes nothing, and only the credential that started an attempt may report on it (403 otherwise).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Request, Response
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from renderfarm.api_deps import Manager, WorkerMe, answers, clip
from renderfarm.errors import ImageRejected, StaleAttempt, UnsupportedImage
from renderfarm.images import store_image
from renderfarm.jobs import JobManager, JobView
from renderfarm.keys import JobState, Outcome, image_name
from renderfarm.png import png_problem
from renderfarm.quality import profile_for
from renderfarm.tokens import Forbidden, TokenWorker

log = logging.getLogger("renderfarm.worker_api")
router = APIRouter(prefix="/worker", tags=["worker"])
MJID_PATH = r"^[0-9a-f]{32}$"
RQ_JOB = r"^[0-9a-f]{32}(-[0-9]{1,6})?$"  # JobManager's rq job ids: the mjid, or <mjid>-<attempt> for a retry
WORKER_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,199}$"
MAX_ATTEMPT = 1_000_000


JobId = Annotated[str, PathParam(pattern=MJID_PATH, description="the job's mjid")]
Attempt = Annotated[int, PathParam(ge=1, le=MAX_ATTEMPT, description="the attempt number `start` answered")]


class ClaimIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rq_job: str = Field(pattern=RQ_JOB, description="the rq job the worker took off its queue")


class StartIn(ClaimIn):
    worker: str = Field(pattern=WORKER_NAME, description="the worker's rq name (host-kind-pid)")


class StartOut(BaseModel):
    mjid: str
    attempt: int
    queue: str
    quality: str
    scene: dict[str, Any]
    heartbeat_ttl: float = Field(description="seconds: heartbeat at least every third of it")
    tile: int | None = Field(default=None, description="a tile of a tiled job: its index, 0 at the top")
    tiles: int | None = Field(default=None, description="a tile of a tiled job: how many tiles the job has")


class FailIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    error: str = Field(max_length=4000, description="why the render failed (Blender's reason)")


class RequeueIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    outcome: Literal["preempted", "interrupted"] = Field(description="how the attempt ended")
    error: str | None = Field(default=None, max_length=4000)


class Ended(BaseModel):
    mjid: str
    attempt: int
    state: JobState


def images_dir(request: Request) -> Path:
    folder: Path = request.app.state.images
    return folder


def own_attempt(jm: JobManager, mjid: str, attempt: int, me: TokenWorker) -> JobView:
    """The job, whose current attempt this must be (409 otherwise), started with this credential (403)."""
    view = jm.get(mjid)
    if attempt != view.attempts:
        raise StaleAttempt(mjid, attempt, view.attempts, view.state.value)
    if view.credential != me.name:
        raise Forbidden(f"worker credential {me.name} did not start attempt {attempt} of job {mjid}")
    return view


class Claimed(BaseModel):
    heartbeat_ttl: float = Field(description="seconds the claim lives: refresh it every third of it")


class Me(BaseModel):
    name: str = Field(description="the worker credential the token belongs to")


@router.get("/me", response_model=Me, responses=answers(401, 503))
def me(who: WorkerMe) -> Me:
    """Whose credential the token is: what a worker asks first, so a wrong or revoked file stops it at once."""
    return Me(name=who.name)


@router.post("/jobs/{mjid}/claim", response_model=Claimed, responses=answers(400, 401, 404, 413, 422, 503))
def claim(mjid: JobId, body: ClaimIn, me: WorkerMe, jm: Manager) -> Claimed:
    """The worker has taken `rq_job` off its queue and is getting ready: the orphan rescue leaves the job alone
    while the claim lives (refresh it every third of the heartbeat TTL)."""
    jm.get(mjid)  # 404 for an unknown job: no claim key is made for one
    jm.claim(mjid, body.rq_job)
    return Claimed(heartbeat_ttl=jm.heartbeat_ttl)


@router.post("/jobs/{mjid}/start", response_model=StartOut, responses=answers(400, 401, 404, 413, 422, 503, stale=True))
def start(mjid: JobId, body: StartIn, me: WorkerMe, jm: Manager) -> StartOut:
    """The job's next attempt begins on this worker (409 when the rq job no longer carries it)."""
    view = jm.mark_started(mjid, body.worker, rq_job=body.rq_job, credential=me.name)
    return StartOut(
        mjid=mjid,
        attempt=view.attempts,
        queue=view.queue.value,
        quality=view.quality,
        scene=jm.scene(mjid),
        heartbeat_ttl=jm.heartbeat_ttl,
        tile=view.tile,
        tiles=view.tiles if view.tile is not None else None,
    )


@router.post(
    "/jobs/{mjid}/attempts/{attempt}/heartbeat", status_code=204, responses=answers(401, 403, 404, 422, 503, stale=True)
)
def heartbeat(mjid: JobId, attempt: Attempt, me: WorkerMe, jm: Manager) -> Response:
    """The attempt is alive; 409 once it is no longer the job's current one (stop rendering: nobody wants it)."""
    own_attempt(jm, mjid, attempt, me)
    if not jm.heartbeat(mjid, attempt):
        now = jm.get(mjid)
        raise StaleAttempt(mjid, attempt, now.attempts, now.state.value)
    return Response(status_code=204)


@router.put(
    "/jobs/{mjid}/attempts/{attempt}/image",
    response_model=Ended,
    responses=answers(401, 403, 404, 413, 415, 422, 503, stale=True, image=True),
    openapi_extra={"requestBody": {"content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}},
)
def upload_image(
    mjid: JobId,
    attempt: Attempt,
    request: Request,
    image: Annotated[bytes, Body(media_type="image/png")],
    me: WorkerMe,
    jm: Manager,
) -> Ended:
    """The attempt's image: checked to be one whole PNG of the job's size (422 otherwise), stored in the API's
    renders folder, then the job is finished. 409 when the attempt is stale: the image is not kept."""
    if request.headers.get("content-type", "").split(";")[0].strip() != "image/png":
        raise UnsupportedImage("send the image as Content-Type: image/png")
    view = own_attempt(jm, mjid, attempt, me)
    profile = profile_for(view.quality)
    problem = png_problem(image, (profile if view.tile_of is None else profile.tile(*view.tile_of)).size)
    if problem is not None:
        raise ImageRejected(mjid, problem)
    name = image_name(mjid, attempt)
    store_image(images_dir(request), name, image)
    try:
        jm.mark_finished(mjid, name, attempt=attempt)
    except StaleAttempt:
        # Moved on between the check and here; keep the file only if the job points to it (a retried upload).
        if jm.get(mjid).image != name:
            (images_dir(request) / name).unlink(missing_ok=True)
        raise
    log.info("job %s attempt %d finished by %s (%d bytes)", mjid, attempt, me.name, len(image))
    return Ended(mjid=mjid, attempt=attempt, state=JobState.FINISHED)


@router.post(
    "/jobs/{mjid}/attempts/{attempt}/failed",
    response_model=Ended,
    responses=answers(400, 401, 403, 404, 413, 422, 503, stale=True),
)
def failed(mjid: JobId, attempt: Attempt, body: FailIn, me: WorkerMe, jm: Manager) -> Ended:
    """The render failed on the scene (not an interruption): the job fails, an HD charge is refunded."""
    own_attempt(jm, mjid, attempt, me)
    view = jm.mark_failed(mjid, body.error, attempt=attempt)
    return Ended(mjid=mjid, attempt=attempt, state=view.state)


@router.post(
    "/jobs/{mjid}/attempts/{attempt}/requeue",
    response_model=Ended,
    responses=answers(400, 401, 403, 404, 413, 422, 503, stale=True),
)
def requeue(mjid: JobId, attempt: Attempt, body: RequeueIn, me: WorkerMe, jm: Manager) -> Ended:
    """The worker was told to stop (preempted) or its Blender was killed (interrupted): the job goes to sq."""
    own_attempt(jm, mjid, attempt, me)
    view = jm.retry_on_standard(mjid, Outcome(body.outcome), attempt=attempt, error=body.error)
    log.info("job %s attempt %d %s by %s: %s", mjid, attempt, body.outcome, me.name, clip(body.error or "", 200))
    return Ended(mjid=mjid, attempt=attempt, state=view.state)

"""The render system's one root exception and its subclasses; the HTTP handler maps them to statuses."""

from __future__ import annotations


class RenderfarmError(Exception):
    """Root of every error the render system reports."""


class NoSuchJob(RenderfarmError):
    def __init__(self, mjid: str) -> None:
        self.mjid = mjid
        super().__init__(f"no such job: {mjid}")


class UnknownUser(RenderfarmError):
    def __init__(self, email: str) -> None:
        self.email = email
        super().__init__(
            f"unknown user: {email} (give them credits first: invoke seed-credits --user {email} --amount 100)"
        )


class InsufficientCredits(RenderfarmError):
    def __init__(self, email: str, balance: int, price: int) -> None:
        self.email, self.balance, self.price = email, balance, price
        super().__init__(
            f"not enough credits for an HD render: {email} has {balance}, the price is {price}"
            f" (add some: invoke seed-credits --user {email} --amount {price})"
        )


class InvalidTransition(RenderfarmError):
    def __init__(self, mjid: str, old: str, new: str) -> None:
        self.mjid, self.old, self.new = mjid, old, new
        super().__init__(f"job {mjid} cannot go from {old} to {new}")


class StaleAttempt(RenderfarmError):
    """A worker acted on an attempt that is no longer the job's current one (it was presumed lost)."""

    def __init__(self, mjid: str, attempt: int, current: int, state: str = "started") -> None:
        self.mjid, self.attempt, self.current, self.state = mjid, attempt, current, state
        now = f"on attempt {current}" if state == "started" else f"{state} after attempt {current}"
        super().__init__(f"job {mjid}: attempt {attempt} is stale (the job is {now})")


class StaleRqJob(RenderfarmError):
    """A worker tried to start a job through an rq job that no longer carries it (the job was queued again
    as another rq job while this one waited to start): this run must not start it."""

    def __init__(self, mjid: str, rq_job: str, current: str) -> None:
        self.mjid, self.rq_job, self.current = mjid, rq_job, current
        self.state = "queued"
        super().__init__(f"job {mjid}: rq job {rq_job} no longer carries it (rq job {current} does now)")


class ImageRejected(RenderfarmError):
    """A worker's upload is not the image its job asked for (not a whole PNG, or not of the job's size): HTTP 422."""

    def __init__(self, mjid: str, reason: str) -> None:
        self.mjid, self.reason = mjid, reason
        super().__init__(f"job {mjid}: the uploaded image is refused: {reason}")


class UnsupportedImage(ImageRejected):
    """A worker's upload is not sent as image/png: HTTP 415."""

    def __init__(self, reason: str) -> None:
        super().__init__("-", reason)


class ImageNotReady(RenderfarmError):
    def __init__(self, mjid: str, state: str) -> None:
        self.mjid, self.state = mjid, state
        super().__init__(f"the image of job {mjid} is not ready: the job is {state}")


class ServiceUnavailable(RenderfarmError):
    """Redis or Postgres does not answer."""


class CredentialRefused(RenderfarmError):
    """The API refuses the worker's credential (unknown or revoked token): the worker stops taking jobs."""


class StorageUnavailable(RenderfarmError):
    """The API cannot write an uploaded image into its renders folder (full, read-only, not its own): HTTP 503."""


class RenderConfigError(RenderfarmError):
    """A render setting (e.g. RENDERFARM_HD_SAMPLES) has a value we cannot use."""


class BlenderRenderError(RenderfarmError):
    """Blender failed to render a scene: carries the command, its exit code and the tail of its output.

    `returncode` is Blender's exit code (negative: killed by that signal; None: it never started, or, with
    `state`, it is still running or its status is unknown). `state` says so in the message instead of the code
    (a warm Blender that reported a scene error and lives on). `reason` is the one useful line (e.g. the scene
    script's exception message); it opens the message.
    """

    def __init__(
        self, argv: list[str], returncode: int | None, output_tail: str, *, reason: str, state: str | None = None
    ) -> None:
        self.argv = [str(a) for a in argv]
        self.returncode = returncode
        self.output_tail = output_tail
        self.reason = reason
        code = state or ("did not start" if returncode is None else f"exit {returncode}")
        msg = f"blender render failed ({code}): {reason}\n  command: {' '.join(self.argv)}"
        if output_tail.strip():
            msg += "\n" + "\n".join("  | " + line for line in output_tail.rstrip().splitlines())
        super().__init__(msg)


class BlenderVanished(BlenderRenderError):
    """The Blender process went away mid-job (killed, crashed): an interruption, not the scene's fault."""

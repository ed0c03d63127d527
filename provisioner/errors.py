"""The provisioner's one root exception and its few subclasses.

Catch `RenderdevError` only at the edge (the invoke task); everywhere else raise the narrow one.
Every message names the thing, the value and the next command to run.
"""

from __future__ import annotations


class RenderdevError(Exception):
    """Root of every error renderdev reports to a user (exit 1, short message)."""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if hint is None else f"{message}\n  next: {hint}")


class ConfigError(RenderdevError):
    """A setting or a versions file is invalid."""


class CommandError(RenderdevError):
    """A subprocess failed; carries the command, its exit code and the tail of its stderr."""

    def __init__(self, argv: list[str], returncode: int, stderr_tail: str, *, hint: str | None = None) -> None:
        self.argv = argv
        self.returncode = returncode
        self.stderr_tail = stderr_tail
        shown = " ".join(argv)
        msg = f"command failed (exit {returncode}): {shown}"
        if stderr_tail.strip():
            msg += "\n" + "\n".join("  | " + line for line in stderr_tail.rstrip().splitlines())
        super().__init__(msg, hint=hint)


class DockerError(RenderdevError):
    """The Docker engine, an image, a container or compose is not as needed."""


class BlenderError(RenderdevError):
    """Finding, downloading, verifying, installing or linking Blender failed."""


class HostWriteError(RenderdevError):
    """A file, folder or link on the host could not be written, or is not ours to change."""

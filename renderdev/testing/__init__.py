"""renderdev's testcontainers kit: the render stack, a Blender, a real worker and a signed-in API client for
end-to-end tests. The fixtures are in `renderdev.testing.plugin` (a pytest plugin, on by default once renderdev is
installed); the objects they yield are importable from here for type hints."""

from renderdev.testing.stack import RenderStack, StackError, start_stack, stop_stack
from renderdev.testing.users import RenderClient, TestUser, seed_user
from renderdev.testing.worker import WorkerProcess, start_worker

__all__ = [
    "RenderClient",
    "RenderStack",
    "StackError",
    "TestUser",
    "WorkerProcess",
    "seed_user",
    "start_stack",
    "start_worker",
    "stop_stack",
]

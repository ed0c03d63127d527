"""renderdev: the distribution's own namespace. `renderdev.testing` is the testcontainers kit (a pytest plugin)
that brings the render stack up for end-to-end tests, here and in other repositories."""

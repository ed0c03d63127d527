"""renderfarm: the render system that the api image runs and the host worker imports.

Nothing here reads configuration or connects to a service at import time: `renderfarm.settings`
reads the environment when asked, and `renderfarm.core.create_app()` builds the HTTP app.
"""

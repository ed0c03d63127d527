"""renderdev's provisioner: brings the render pipeline up on a developer's host.

Every module is one idea; `tasks.py` only wires command-line options to the functions here.
Nothing in this package reads configuration or connects to a service at import time.
"""

"""Blender on the host: read the version the api container wants, install it, link it.

One idea per module: `versions` (the versions file), `inspect` (the api container's version),
`download`, `extract`, `verify`, `installs` (what is in the install root), `dpkg` (what Debian's
package manager says), `sources` (where an install comes from, in order), `link` (the `blender`
symlink), `install` (the plan, for `invoke blender`/`setup`, and the checks, for `invoke status`).

Entry points: `install.plan_blender`, `install.check_blender`, `link.unlink`.
"""

"""Blender on the host: read the version the api container declares, install it, link it.

One idea per module: `versions` (the versions file and version strings), `declared_version` (the version
the api container declares), `download`, `extract`, `verify` (what a binary reports for `--version`),
`install_root` (the verified installs, one folder per version), `dpkg` (what Debian's package manager
says), `sources` (where an install comes from, in order), `link` (the `blender` symlink), `provision`
(the plan, for `invoke blender`/`setup`, and the checks, for `invoke status`).

Entry points: `provision.plan_blender`, `provision.check_blender`, `link.unlink`.
"""

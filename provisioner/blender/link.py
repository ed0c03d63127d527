"""The `blender` link (settings.blender_link, default /usr/bin/blender) to the installed binary.

- a link already pointing at the wanted binary is a no-op;
- a link is ours when it points into the install root, or when our records say we made it;
  only ours is ever replaced without --force, and only ours is ever removed (`unlink`);
- a regular file or a foreign link is refused, naming it (and its package when dpkg owns it);
  --force moves it aside to a named backup, except a packaged file, which is diverted with
  `dpkg-divert --local --rename` instead of being overwritten;
- a packaged file at the link path that reports the wanted version already satisfies the link;
- no write access: a HostWriteError with the exact `sudo` command.

Records (`<install-root>/.renderdev-links.json`) remember what we did to each link path (its
target, a dpkg diversion, a backup), so `unlink` can undo exactly that.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from pathlib import Path

from provisioner import fsops
from provisioner.blender import dpkg
from provisioner.blender.install_root import points_into
from provisioner.blender.verify import reported_version
from provisioner.config import Settings
from provisioner.errors import BlenderError, ConfigError, HostWriteError

RECORDS = ".renderdev-links.json"
RECORDS_FORMAT = 1


class LinkState(StrEnum):
    RIGHT = "right"  # already points at the wanted binary
    PACKAGED = "packaged"  # a packaged file there reports the wanted version: satisfied as it is
    MISSING = "missing"  # nothing there yet
    OURS = "ours"  # our link to another binary (or dangling): replaced
    FOREIGN_LINK = "foreign link"  # a link renderdev did not make: --force moves it aside
    FILE = "file"  # a regular file: --force moves it aside
    PACKAGED_FILE = "packaged file"  # a distro package's file of another version: --force diverts it
    OTHER = "other"  # a folder or special file: never replaced


@dataclass(frozen=True)
class LinkPlan:
    link: Path
    target: Path
    state: LinkState
    now: str  # what is at the link path, in words
    owner: str | None = None  # the dpkg package that ships the link path

    @property
    def ok(self) -> bool:
        return self.state in (LinkState.RIGHT, LinkState.PACKAGED)

    @property
    def needs_force(self) -> bool:
        return self.state in (LinkState.FOREIGN_LINK, LinkState.FILE, LinkState.PACKAGED_FILE)

    @property
    def diverted_name(self) -> Path:
        return self.link.with_name(self.link.name + ".distrib")


@dataclass(frozen=True)
class LinkRecord:
    target: str
    diverted_to: str | None = None  # we diverted the packaged file to this name
    backup: str | None = None  # we moved a foreign file or link aside to this name


# --- records ----------------------------------------------------------------------------------


def _records_path(root: Path) -> Path:
    return root / RECORDS


def read_records(root: Path) -> dict[str, LinkRecord]:
    path = _records_path(root)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"cannot read renderdev's link records {path}: {exc}",
            hint=f"remove {path} (renderdev then only treats links into {root} as its own)",
        ) from exc
    fmt = data.get("format") if isinstance(data, dict) else None
    if not isinstance(fmt, int) or fmt > RECORDS_FORMAT:
        raise ConfigError(
            f"{path} has format {fmt!r}; this renderdev reads format {RECORDS_FORMAT}",
            hint="upgrade renderdev, or remove that file",
        )
    links = data.get("links") or {}
    try:
        return {str(k): LinkRecord(**v) for k, v in links.items()}
    except TypeError as exc:
        raise ConfigError(f"{path}: unexpected content ({exc})", hint=f"remove {path}") from exc


def _write_records(root: Path, records: dict[str, LinkRecord]) -> None:
    data = {"format": RECORDS_FORMAT, "links": {k: asdict(v) for k, v in sorted(records.items())}}
    fsops.atomic_write_text(_records_path(root), json.dumps(data, indent=2) + "\n")


# --- deciding -----------------------------------------------------------------------------------


def _same(path: str, target: Path) -> bool:
    if os.path.normpath(path) == os.path.normpath(target):
        return True
    return os.path.exists(path) and os.path.realpath(path) == os.path.realpath(target)


def _reported(path: Path, *, remember: bool = True) -> str | None:
    try:
        return reported_version(path, remember=remember)[0]
    except BlenderError:
        return None


def is_ours(link: Path, dest: str, root: Path, records: dict[str, LinkRecord]) -> bool:
    """A link (whose absolute destination is dest) is ours when it points into the install root,
    or when we recorded making it point there."""
    rec = records.get(str(link))
    return points_into(root, dest) or (rec is not None and os.path.normpath(rec.target) == dest)


def decide(link: Path, target: Path, *, install_root: Path, version: str, remember: bool = True) -> LinkPlan:
    """What is at the link path, and what making it point at target takes (remember: see reported_version)."""
    try:
        st = os.lstat(link)
    except FileNotFoundError:
        return LinkPlan(link, target, LinkState.MISSING, "nothing there")
    except NotADirectoryError:
        return LinkPlan(link, target, LinkState.OTHER, "under a path that is not a folder")
    if stat.S_ISLNK(st.st_mode):
        raw = os.readlink(link)
        dest = os.path.normpath(os.path.join(link.parent, raw))
        if _same(dest, target):
            return LinkPlan(link, target, LinkState.RIGHT, f"a link to {raw}")
        if is_ours(link, dest, install_root, read_records(install_root)):
            dangling = "" if os.path.exists(link) else ", dangling"
            return LinkPlan(link, target, LinkState.OURS, f"renderdev's link to {raw}{dangling}")
        return _foreign(link, target, version, f"a link to {raw}", LinkState.FOREIGN_LINK, remember=remember)
    if stat.S_ISREG(st.st_mode):
        if _same(str(link), target):
            return LinkPlan(link, target, LinkState.RIGHT, "the wanted binary itself")
        return _foreign(link, target, version, "a regular file", LinkState.FILE, remember=remember)
    kind = "a folder" if stat.S_ISDIR(st.st_mode) else "a special file"
    return LinkPlan(link, target, LinkState.OTHER, kind)


def _foreign(link: Path, target: Path, version: str, what: str, state: LinkState, *, remember: bool = True) -> LinkPlan:
    owner = dpkg.owner(link)
    if owner is None:
        return LinkPlan(link, target, state, what)
    found = _reported(link, remember=remember)
    desc = f"{what} of Debian package {owner} (Blender {found or 'unknown'})"
    state = LinkState.PACKAGED if found == version else LinkState.PACKAGED_FILE
    return LinkPlan(link, target, state, desc, owner=owner)


def sudo_command(plan: LinkPlan) -> str:
    """The exact commands that make the link, for a user without write access."""
    q = shlex.quote
    link, target = q(str(plan.link)), q(str(plan.target))
    if plan.state is LinkState.PACKAGED_FILE:
        divert = " ".join(q(a) for a in dpkg.divert_argv(plan.link, plan.diverted_name))
        return f"sudo {divert} && sudo ln -s {target} {link}"
    if plan.state in (LinkState.FILE, LinkState.FOREIGN_LINK):
        return f"sudo mv {link} {q(str(fsops.backup_path(plan.link)))} && sudo ln -s {target} {link}"
    return f"sudo ln -sfn {target} {link}"


def check(plan: LinkPlan, *, force: bool) -> None:
    """Raise when the link cannot or may not be made as planned (refused without force, no write access)."""
    if plan.ok:
        return
    link = plan.link
    if plan.state is LinkState.OTHER:
        raise HostWriteError(
            f"{link} is {plan.now}: renderdev replaces only files and links there",
            hint="remove it yourself, or choose another path with --link PATH",
        )
    if plan.needs_force and not force:
        if plan.state is LinkState.PACKAGED_FILE:
            action = f"divert it (dpkg-divert keeps it as {plan.diverted_name})"
        else:
            action = "move it aside (to a backup beside it)"
        raise HostWriteError(
            f"{link} is {plan.now}, not a link renderdev made: left alone",
            hint=f"re-run with --force to {action} and link it to {plan.target}, or choose another --link PATH",
        )
    needs_root = plan.state is LinkState.PACKAGED_FILE and os.geteuid() != 0
    if needs_root or not fsops.writable(link):
        raise HostWriteError(
            f"no write access to {link.parent} for the Blender link {link}",
            hint=f"run: {sudo_command(plan)}   (or re-run the task with sudo -E)",
        )


# --- acting -------------------------------------------------------------------------------------


def apply(plan: LinkPlan, *, force: bool, install_root: Path) -> str:
    """Make the link as planned; return what was done."""
    check(plan, force=force)
    if plan.ok:
        return f"{plan.link} already right"
    link, target = plan.link, plan.target
    records = read_records(install_root)
    prev = records.get(str(link)) or LinkRecord(target=str(target))
    rec = replace(prev, target=str(target))
    if plan.state in (LinkState.FILE, LinkState.FOREIGN_LINK):
        backup = fsops.move_aside(link)
        try:
            fsops.atomic_symlink(link, target)
        except HostWriteError:
            os.rename(backup, link)
            raise
        rec = replace(rec, backup=str(backup))
        done = f"moved {plan.now} aside to {backup}; linked {link} -> {target}"
    elif plan.state is LinkState.PACKAGED_FILE:
        dpkg.divert(link, plan.diverted_name)
        try:
            fsops.atomic_symlink(link, target)
        except HostWriteError:
            dpkg.undivert(link)
            raise
        rec = replace(rec, diverted_to=str(plan.diverted_name))
        done = (
            f"diverted package {plan.owner}'s {link} to {plan.diverted_name} (dpkg-divert); linked {link} -> {target}"
        )
    else:
        fsops.atomic_symlink(link, target)
        done = f"linked {link} -> {target}" + (f" (was {plan.now})" if plan.state is LinkState.OURS else "")
    records[str(link)] = rec
    _write_records(install_root, records)
    return done


def unlink(settings: Settings) -> str | None:
    """Remove the link if it is ours (and undo what we did for it); None when nothing of ours is there."""
    link, root = settings.blender_link, settings.blender_install_root
    records = read_records(root)
    rec = records.get(str(link))
    done: list[str] = []
    present = os.path.lexists(link)
    if present and link.is_symlink():
        raw = os.readlink(link)
        if is_ours(link, os.path.normpath(os.path.join(link.parent, raw)), root, records):
            if not fsops.writable(link):
                extra = ""
                if rec is not None and rec.diverted_to:
                    extra = " && sudo " + " ".join(shlex.quote(a) for a in dpkg.undivert_argv(link))
                raise HostWriteError(
                    f"no write access to {link.parent} to remove the Blender link {link}",
                    hint=f"run: sudo rm {shlex.quote(str(link))}{extra}",
                )
            os.unlink(link)
            done.append(f"removed {link} (-> {raw})")
    if rec is None or (present and not done):
        return "; ".join(done) or None  # not ours: left alone
    if rec.diverted_to:
        dpkg.undivert(link)
        done.append(f"restored {link} from {rec.diverted_to} (dpkg-divert --remove)")
    elif rec.backup and os.path.lexists(rec.backup) and not os.path.lexists(link):
        os.rename(rec.backup, link)
        done.append(f"put back {link} from {rec.backup}")
    del records[str(link)]
    _write_records(root, records)
    return "; ".join(done) or None

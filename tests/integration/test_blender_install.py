"""Installing Blender from a loopback mirror that serves a release-shaped archive made from the host's
real Blender (so `blender --version` is real), and linking it; the refusals; the dpkg-owned link path.

Nothing here touches the real /usr/bin/blender except a read-only look at it.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import shutil
import subprocess
import tarfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import pytest
from rich.console import Console

from provisioner.blender import link as links
from provisioner.blender.install_root import METADATA
from provisioner.blender.provision import plan_blender
from provisioner.config import REPO_ROOT, Settings
from provisioner.errors import BlenderError, HostWriteError
from provisioner.plan import StepState, apply_steps

pytestmark = pytest.mark.integration

VERSION = "3.4.1"
SLIP_VERSION = "3.3.21"
HOST_BLENDER = Path("/usr/bin/blender")


@dataclass(frozen=True)
class Mirror:
    folder: Path  # laid out like download.blender.org: release/BlenderX.Y/<file>
    url: str  # the same folder over loopback HTTP
    sha256: dict[str, str]  # version -> sha256 of its archive
    build_seconds: float


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _build_release(tree_root: Path, out: Path, version: str, binary: Path) -> None:
    top = tree_root / f"blender-{version}-linux-x64"
    (top / version.rsplit(".", 1)[0] / "datafiles").mkdir(parents=True)
    (top / version.rsplit(".", 1)[0] / "datafiles" / "README.txt").write_text("test release\n")
    shutil.copy2(binary, top / "blender")
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as fh:
        tar = subprocess.Popen(["tar", "-C", str(tree_root), "-cf", "-", top.name], stdout=subprocess.PIPE)
        subprocess.run(["xz", "-0", "-T0", "-c"], stdin=tar.stdout, stdout=fh, check=True)
        assert tar.stdout is not None
        tar.stdout.close()
        assert tar.wait() == 0
    shutil.rmtree(tree_root)


def _build_slip(out: Path, version: str, outside_name: str) -> None:
    """A release-shaped archive with one entry that climbs out of the destination."""
    top = f"blender-{version}-linux-x64"
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(out, "w:xz", preset=0) as tar:
        for name, data in [(f"{top}/blender", b"#!/bin/sh\necho 'Blender 3.3.21'\n"), (outside_name, b"pwned\n")]:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the base class's name
        pass


SLIP_MARK = f"renderdev-slip-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def mirror(tmp_path_factory: pytest.TempPathFactory, host_blender: Path) -> Iterator[Mirror]:
    base = tmp_path_factory.mktemp("mirror")
    folder = base / "www"
    started = time.monotonic()
    good = folder / "release" / "Blender3.4" / f"blender-{VERSION}-linux-x64.tar.xz"
    _build_release(base / "tree", good, VERSION, host_blender)
    built = time.monotonic() - started
    slip = folder / "release" / "Blender3.3" / f"blender-{SLIP_VERSION}-linux-x64.tar.xz"
    _build_slip(slip, SLIP_VERSION, f"blender-{SLIP_VERSION}-linux-x64/../../../../{SLIP_MARK}.txt")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), partial(_Quiet, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Mirror(
            folder=folder,
            url=f"http://127.0.0.1:{server.server_address[1]}",
            sha256={VERSION: _sha256(good), SLIP_VERSION: _sha256(slip)},
            build_seconds=built,
        )
    finally:
        server.shutdown()
        server.server_close()


def write_versions(path: Path, shas: dict[str, str]) -> Path:
    lines = ["format: 1", "versions:"]
    for version, sha in shas.items():
        series = version.rsplit(".", 1)[0]
        url = f"https://download.blender.org/release/Blender{series}/blender-{version}-linux-x64.tar.xz"
        lines += [f'  "{version}":', "    linux-x64:", f"      url: {url}", f'      sha256: "{sha}"']
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def settings_for(tmp_path: Path, mirror: Mirror, isolated_settings: Callable[..., Settings]) -> Callable[..., Settings]:
    """Settings on tmp paths, the loopback mirror, and an 'official' site that answers 404 (never the real one)."""

    def make(shas: dict[str, str] | None = None, **overrides: object) -> Settings:
        values: dict[str, object] = {
            "blender_versions_file": write_versions(tmp_path / "versions.yaml", shas or mirror.sha256),
            "blender_mirror": mirror.url,
            "blender_official_base": f"{mirror.url}/no-such-site/release",
            "download_timeout": 20.0,
        }
        values.update(overrides)
        return isolated_settings(**values)

    return make


def run_plan(settings: Settings, **kwargs: object) -> tuple[list[str], list[str]]:
    console = Console(file=io.StringIO(), width=200)
    steps = plan_blender(None, settings, console, version=VERSION, **kwargs)  # type: ignore[arg-type]
    out = apply_steps(console, steps, dry_run=False)
    return out.changed, out.already_right


def listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def first_line(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.splitlines()[0]


def test_checksum_right_installs_and_links(settings_for: Callable[..., Settings], mirror: Mirror) -> None:
    settings = settings_for()
    started = time.monotonic()
    changed, right = run_plan(settings)
    seconds = time.monotonic() - started
    root, link = settings.blender_install_root, settings.blender_link
    assert [c.split(" (")[0] for c in changed] == [f"blender: install Blender {VERSION}", f"blender: link {link}"]
    assert "mirror: " in changed[0]
    assert link.is_symlink() and os.readlink(link) == str(root / VERSION / "blender")
    assert first_line(link) == "Blender 3.4.1"
    assert sorted(p.name for p in root.iterdir()) == [links.RECORDS, VERSION], "no staging folder or archive left"
    assert (root / VERSION / METADATA).is_file()
    print(f"\ninstall from the loopback mirror: {seconds:.1f} s (archive built in {mirror.build_seconds:.1f} s)")


def test_second_install_is_a_noop(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for()
    run_plan(settings)
    root, link = settings.blender_install_root, settings.blender_link
    before = {p: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in [link, *root.rglob("*")]}
    console = Console(file=io.StringIO(), width=200)
    steps = plan_blender(None, settings, console, version=VERSION)
    assert [s.state for s in steps] == [StepState.OK] * 3, steps
    assert "mirror" not in steps[1].detail and str(root / VERSION) in steps[1].detail
    out = apply_steps(console, steps, dry_run=False)
    assert out.changed == [] and len(out.already_right) == 3
    after = {p: (p.lstat().st_ino, p.lstat().st_mtime_ns) for p in [link, *root.rglob("*")]}
    assert after == before, "nothing was rewritten"


def test_checksum_mismatch_refused_nothing_left(settings_for: Callable[..., Settings], tmp_path: Path) -> None:
    settings = settings_for({VERSION: "0" * 64})
    before = listing(tmp_path)
    with pytest.raises(BlenderError) as err:
        run_plan(settings)
    msg = err.value.message
    assert "- mirror: sha256 mismatch for" in msg and "expected 0000" in msg
    assert "- official: GET " in msg and "HTTP 404" in msg
    assert "- apt: " in msg
    assert not settings.blender_install_root.exists(), "nothing left: not even the install root it made"
    assert listing(tmp_path) == before, "nothing left beside it either"
    assert not os.path.lexists(settings.blender_link)


def test_tar_slip_archive_refused_nothing_written_outside(
    settings_for: Callable[..., Settings], mirror: Mirror, tmp_path: Path
) -> None:
    settings = settings_for(mirror.sha256, blender_source="mirror")
    console = Console(file=io.StringIO(), width=200)
    steps = plan_blender(None, settings, console, version=SLIP_VERSION)
    with pytest.raises(BlenderError) as err:
        apply_steps(console, steps, dry_run=False)
    assert "tar slip" in err.value.message and "climbs out with '..'" in err.value.message
    assert not settings.blender_install_root.exists()
    assert not [p for p in tmp_path.parent.rglob(f"{SLIP_MARK}*")]
    assert not Path("/tmp", f"{SLIP_MARK}.txt").exists()


def test_foreign_link_refused_then_replaced_with_force(settings_for: Callable[..., Settings]) -> None:
    settings = settings_for()
    link = settings.blender_link
    link.parent.mkdir(parents=True)
    link.symlink_to("/bin/true")
    with pytest.raises(HostWriteError) as err:
        run_plan(settings)
    assert str(link) in err.value.message and "a link to /bin/true" in err.value.message
    assert "--force" in (err.value.hint or "")
    assert not settings.blender_install_root.exists(), "refused before downloading anything"
    assert os.readlink(link) == "/bin/true"

    changed, _ = run_plan(settings, force=True)
    backups = [p for p in link.parent.iterdir() if ".renderdev-backup-" in p.name]
    assert len(backups) == 1 and os.readlink(backups[0]) == "/bin/true"
    assert str(backups[0]) in changed[-1], "the message names the backup"
    assert first_line(link) == "Blender 3.4.1"

    undone = links.unlink(settings)
    assert undone is not None and str(backups[0]) in undone
    assert os.readlink(link) == "/bin/true"


def test_local_folder_mirror(settings_for: Callable[..., Settings], mirror: Mirror) -> None:
    settings = settings_for(blender_mirror=str(mirror.folder), blender_source="mirror")
    changed, _ = run_plan(settings)
    assert f"mirror: {settings.blender_install_root / VERSION / 'blender'}" in changed[0]
    assert first_line(settings.blender_link) == "Blender 3.4.1"


def test_dpkg_owned_link_path_read_only(settings_for: Callable[..., Settings], host_blender: Path) -> None:
    """The real /usr/bin/blender, only looked at (no force, nothing applied): Debian's package satisfies
    3.4.1 through the apt pin or by its version, and another version is refused naming the package."""
    assert os.readlink(host_blender) == str(HOST_BLENDER), "host_blender is Debian's package (--source apt)"
    before = os.lstat(HOST_BLENDER)
    console = Console(file=io.StringIO(), width=200)

    pinned = settings_for(blender_link=HOST_BLENDER, blender_versions_file=REPO_ROOT / "blender_versions.yaml")
    steps = plan_blender(None, pinned, console, version=VERSION)
    assert [s.state for s in steps] == [StepState.OK] * 3, steps
    assert "Debian package blender 3.4.1+dfsg-2+b1" in steps[1].detail

    unpinned = settings_for(blender_link=HOST_BLENDER)  # no apt pin: a tarball install would be made
    steps = plan_blender(None, unpinned, console, version=VERSION)
    assert steps[1].state is StepState.CHANGE
    assert "of Debian package blender (Blender 3.4.1)" in steps[2].detail, "the packaged file satisfies the link"

    root = unpinned.blender_install_root
    plan = links.decide(HOST_BLENDER, root / "4.2.3" / "blender", install_root=root, version="4.2.3")
    assert plan.state is links.LinkState.PACKAGED_FILE and plan.owner == "blender"
    with pytest.raises(HostWriteError) as err:
        links.check(plan, force=False)
    assert "/usr/bin/blender is a regular file of Debian package blender (Blender 3.4.1)" in err.value.message
    assert "dpkg-divert" in (err.value.hint or "") and "/usr/bin/blender.distrib" in (err.value.hint or "")
    assert "dpkg-divert --local --rename --divert /usr/bin/blender.distrib --add /usr/bin/blender" in (
        links.sudo_command(plan)
    )
    after = os.lstat(HOST_BLENDER)
    assert (before.st_ino, before.st_mtime_ns) == (after.st_ino, after.st_mtime_ns)
    assert not root.exists()


def test_apt_waits_for_another_apt_instead_of_failing(host_blender: Path) -> None:
    """Another apt holds dpkg's lock (unattended-upgrades, a second pytest-xdist worker's `invoke blender`): our
    apt-get waits for it, where a bare apt-get exits 100 at once. The pinned package is installed already (the
    host_blender fixture), so apt has nothing to do once it has the lock."""
    import fcntl

    from provisioner.blender import dpkg
    from provisioner.blender.sources import apt_argv
    from provisioner.blender.versions import load_versions

    assert os.geteuid() == 0, "the apt source runs as root"
    versions = load_versions(REPO_ROOT / "blender_versions.yaml").versions.values()
    pins = [v.apt for v in versions if v.apt is not None and dpkg.package_version(v.apt.package) == v.apt.version]
    assert pins, "the host_blender fixture installed a pinned Debian package"
    pin = pins[0]
    hold = 3.0
    with open("/var/lib/dpkg/lock-frontend", "w") as lock:
        fcntl.lockf(lock, fcntl.LOCK_EX)
        timer = threading.Timer(hold, fcntl.lockf, args=(lock, fcntl.LOCK_UN))
        timer.start()
        start = time.monotonic()
        bare = subprocess.run(["apt-get", "install", "-y", pin.spec], capture_output=True, text=True)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        ours = subprocess.run(apt_argv(pin), capture_output=True, text=True, env=env)
        took = time.monotonic() - start
        timer.join()
    assert bare.returncode == 100 and "lock" in bare.stderr, bare.stderr
    assert ours.returncode == 0, ours.stdout + ours.stderr
    assert took >= hold * 0.9, f"apt-get returned after {took:.1f} s while the lock was held for {hold} s"

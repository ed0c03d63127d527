"""The worker image's Blender without Docker: the choice (Debian's package, or the release archive) from the versions
file and the distro; the build args and context hash (the archive's sha256 counts, the staged file does not); what a
plan says; the archive fetched, verified and cached by the `invoke blender` code (from a local-folder mirror of a
release-shaped archive); and the build context's staging folder."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
from rich.console import Console

from provisioner.blender import archive
from provisioner.blender.versions import load_versions
from provisioner.config import REPO_ROOT, Settings, load_settings
from provisioner.errors import BlenderError
from provisioner.images import context_hash, worker_blender
from provisioner.worker_blender import WorkerSource, choose, describe, staged, staging_dir
from tests.unit.test_blender_sources import TOP, URL, VERSION, make_release, sha256_of

APT_12 = "    apt:\n      package: blender\n      version: 9.9.9+dfsg-1\n      distro: debian-12\n"
APT_13 = "    apt:\n      package: blender\n      version: 9.9.9+dfsg-1\n      distro: debian-13\n"
APT_ANY = "    apt:\n      package: blender\n      version: 9.9.9+dfsg-1\n"
SHA = "ab" * 32


def versions(tmp_path: Path, sha: str | None = SHA, apt: str = "") -> Path:
    path = tmp_path / "versions.yaml"
    sha_text = "null" if sha is None else f'"{sha}"'
    path.write_text(f'versions:\n  "{VERSION}":\n    linux-x64:\n      url: {URL}\n      sha256: {sha_text}\n{apt}')
    return path


# --- the choice ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("apt", "distro"), [(APT_12, "debian-12"), (APT_ANY, "debian-12"), (APT_13, "debian-13")])
def test_a_package_pinned_for_the_images_distro_is_used(tmp_path: Path, apt: str, distro: str) -> None:
    chosen = choose(VERSION, load_versions(versions(tmp_path, apt=apt)), distro)
    assert (chosen.source, chosen.version, chosen.package) == (WorkerSource.APT, VERSION, "blender=9.9.9+dfsg-1")
    assert chosen.build_args() == {
        "BLENDER_SOURCE": "apt",
        "BLENDER_VERSION": VERSION,
        "BLENDER_PACKAGE": "blender=9.9.9+dfsg-1",
        "BLENDER_ARCHIVE": "",
        "BLENDER_SHA256": "",
    }


@pytest.mark.parametrize(("apt", "distro"), [("", "debian-12"), (APT_13, "debian-12"), (APT_12, "debian-13")])
def test_otherwise_the_release_archive_with_its_sha256(tmp_path: Path, apt: str, distro: str) -> None:
    chosen = choose(VERSION, load_versions(versions(tmp_path, apt=apt)), distro)
    assert (chosen.source, chosen.archive, chosen.sha256) == (WorkerSource.ARCHIVE, f"{TOP}.tar.xz", SHA)
    assert chosen.build_args() == {
        "BLENDER_SOURCE": "archive",
        "BLENDER_VERSION": VERSION,
        "BLENDER_PACKAGE": "",
        "BLENDER_ARCHIVE": f"{TOP}.tar.xz",
        "BLENDER_SHA256": SHA,
    }


def test_an_archive_without_a_sha256_is_refused_naming_the_file_and_version(tmp_path: Path) -> None:
    path = versions(tmp_path, sha=None)
    with pytest.raises(BlenderError) as err:
        choose(VERSION, load_versions(path), "debian-12")
    assert f"Blender {VERSION}" in err.value.message and str(path) in err.value.message
    assert "no sha256" in err.value.message and "invoke images" in (err.value.hint or "")
    assert choose(VERSION, load_versions(versions(tmp_path, sha=None, apt=APT_12)), "debian-12").source == "apt"


def test_a_version_not_in_the_versions_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(BlenderError, match="Blender 1.2.3 is not in"):
        choose("1.2.3", load_versions(versions(tmp_path)), "debian-12")


def test_the_repositorys_versions_file(tmp_path: Path) -> None:
    """3.4.1 is Debian 12's package; 4.5.14 (no Debian package) comes as its published archive."""
    pinned = load_versions(REPO_ROOT / "blender_versions.yaml")
    assert choose("3.4.1", pinned, "debian-12").package == "blender=3.4.1+dfsg-2+b1"
    assert choose("3.4.1", pinned, "debian-13").source == "archive"
    newer = choose("4.5.14", pinned, "debian-12")
    assert (newer.source, newer.archive) == ("archive", "blender-4.5.14-linux-x64.tar.xz")
    assert newer.sha256 == "9ba871ff2ecd36526b77432745980b7e6664ecd0c7ca11c48849073dcfe06da3"


# --- settings on a compose copy that declares 9.9.9, a local-folder mirror ----------------------


def compose_copy(tmp_path: Path, version: str = VERSION) -> Path:
    compose = tmp_path / "compose"
    if compose.is_dir():  # a second set of settings in one test
        return compose
    shutil.copytree(REPO_ROOT / "compose", compose, ignore=shutil.ignore_patterns("wheels", "*.tar.xz"))
    dockerfile = compose / "api" / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text().replace("ARG BLENDER_VERSION=3.4.1", f"ARG BLENDER_VERSION={version}"))
    return compose


@pytest.fixture
def mirror(tmp_path: Path) -> Path:
    folder = tmp_path / "mirror"
    make_release(folder / "release" / "Blender9.9" / f"{TOP}.tar.xz")
    return folder


def settings_for(tmp_path: Path, sha: str, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "compose_dir": compose_copy(tmp_path),
        "state_dir": tmp_path / "state",
        "blender_source": "auto",
        "blender_official_base": "http://127.0.0.1:1/release",  # refused at once: never the real site
    }
    values.update(overrides)
    if "blender_versions_file" not in values:
        values["blender_versions_file"] = versions(tmp_path, sha)
    return load_settings(**values)


def quiet() -> Console:
    return Console(file=io.StringIO(), width=300)


def printed(console: Console) -> str:
    out = console.file
    assert isinstance(out, io.StringIO)
    return out.getvalue()


def mirrored(mirror: Path) -> Path:
    return mirror / "release" / "Blender9.9" / f"{TOP}.tar.xz"


def test_the_archives_sha256_is_in_the_context_hash_and_the_staged_file_is_not(tmp_path: Path, mirror: Path) -> None:
    settings = settings_for(tmp_path, sha256_of(mirrored(mirror)))
    before = context_hash(settings, "worker", "sha256:base")
    assert context_hash(settings, "worker", "sha256:base") == before  # the same archive: no rebuild
    (staging_dir(settings) / f"{TOP}.tar.xz").write_bytes(b"a staged archive")
    assert context_hash(settings, "worker", "sha256:base") == before  # counted through its sha256 only
    versions(tmp_path, "cd" * 32)
    assert context_hash(settings, "worker", "sha256:base") != before  # another archive: rebuilt


def test_the_plan_says_where_the_workers_blender_comes_from(tmp_path: Path, mirror: Path) -> None:
    sha = sha256_of(mirrored(mirror))
    settings = settings_for(tmp_path, sha, blender_mirror=str(mirror))
    said = describe(settings, worker_blender(settings))
    assert said.startswith(f"Blender {VERSION} from the release archive {TOP}.tar.xz (sha256 {sha[:12]}...)")
    assert f"fetched from mirror {mirrored(mirror)}, else official http://127.0.0.1:1/release/Blender9.9/" in said
    forced = settings_for(tmp_path, sha, blender_source="official")
    assert "fetched from official http://127.0.0.1:1/" in describe(forced, worker_blender(forced))
    archive.fetch_archive(settings, VERSION, worker_blender(settings).entry, quiet())
    assert f"cached {archive.cached_path(settings, VERSION)}" in describe(settings, worker_blender(settings))
    apt = settings_for(tmp_path, sha, blender_versions_file=versions(tmp_path, sha, apt=APT_12))
    assert describe(apt, worker_blender(apt)) == f"Blender {VERSION} from Debian's package blender=9.9.9+dfsg-1"


# --- the archive on the host ----------------------------------------------------------------------


def test_fetched_verified_and_cached(tmp_path: Path, mirror: Path) -> None:
    sha = sha256_of(mirrored(mirror))
    settings = settings_for(tmp_path, sha, blender_mirror=str(mirror))
    entry = worker_blender(settings).entry
    got = archive.fetch_archive(settings, VERSION, entry, quiet())
    assert got == archive.cached_path(settings, VERSION) == tmp_path / "state" / "blender-archives" / f"{TOP}.tar.xz"
    assert sha256_of(got) == sha
    assert [p.name for p in got.parent.iterdir()] == [got.name], "no partial download left"
    shutil.rmtree(mirror)  # the cache answers now, checked again
    console = quiet()
    assert archive.fetch_archive(settings, VERSION, entry, console) == got
    assert "cached" in printed(console) and "sha256 ok" in printed(console)


def test_a_changed_cached_file_is_fetched_again(tmp_path: Path, mirror: Path) -> None:
    sha = sha256_of(mirrored(mirror))
    settings = settings_for(tmp_path, sha, blender_mirror=str(mirror))
    cached = archive.fetch_archive(settings, VERSION, worker_blender(settings).entry, quiet())
    cached.write_bytes(b"changed on disk")
    console = quiet()
    assert archive.fetch_archive(settings, VERSION, worker_blender(settings).entry, console) == cached
    assert sha256_of(cached) == sha
    assert "fetching it again" in printed(console)


def test_a_mismatch_names_the_file_and_both_digests_and_keeps_nothing(tmp_path: Path, mirror: Path) -> None:
    actual = sha256_of(mirrored(mirror))
    settings = settings_for(tmp_path, SHA, blender_mirror=str(mirror))
    with pytest.raises(BlenderError) as err:
        archive.fetch_archive(settings, VERSION, worker_blender(settings).entry, quiet())
    msg = err.value.message
    assert f"could not fetch the Blender {VERSION} release archive {TOP}.tar.xz" in msg
    assert f"- mirror: sha256 mismatch for {mirrored(mirror)}: expected {SHA}, got {actual}" in msg
    assert "- official: GET http://127.0.0.1:1/release/Blender9.9/" in msg
    assert "RENDERDEV_BLENDER_MIRROR" in (err.value.hint or "")
    assert list((tmp_path / "state" / "blender-archives").iterdir()) == []


def test_no_mirror_set_is_listed_and_a_forced_source_is_the_only_one(tmp_path: Path, mirror: Path) -> None:
    settings = settings_for(tmp_path, SHA, blender_source="mirror")
    with pytest.raises(BlenderError) as err:
        archive.fetch_archive(settings, VERSION, worker_blender(settings).entry, quiet())
    assert "- mirror: no mirror set" in err.value.message and "official" not in err.value.message


# --- the build context ------------------------------------------------------------------------------


def test_staged_for_the_build_only(tmp_path: Path, mirror: Path) -> None:
    settings = settings_for(tmp_path, sha256_of(mirrored(mirror)), blender_mirror=str(mirror))
    folder = staging_dir(settings)
    assert folder == settings.compose_dir / "worker" / "blender"
    (folder / "blender-1.2.3-linux-x64.tar.xz").write_bytes(b"left by an interrupted build")
    with staged(settings, worker_blender(settings), quiet()):
        assert sorted(p.name for p in folder.iterdir()) == [".gitignore", f"{TOP}.tar.xz"]
        assert sha256_of(folder / f"{TOP}.tar.xz") == sha256_of(mirrored(mirror))
    assert [p.name for p in folder.iterdir()] == [".gitignore"]


def test_a_failed_fetch_stages_nothing_and_apt_stages_nothing(tmp_path: Path, mirror: Path) -> None:
    settings = settings_for(tmp_path, SHA, blender_mirror=str(mirror))
    with pytest.raises(BlenderError, match="sha256 mismatch"):
        with staged(settings, worker_blender(settings), quiet()):
            raise AssertionError("no build may start")
    assert [p.name for p in staging_dir(settings).iterdir()] == [".gitignore"]
    apt = settings_for(tmp_path, SHA, blender_versions_file=versions(tmp_path, SHA, apt=APT_12))
    with staged(apt, worker_blender(apt), quiet()):
        assert [p.name for p in staging_dir(apt).iterdir()] == [".gitignore"]

"""The versions file: version parsing, schema validation, and the real blender_versions.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest

from provisioner.blender.versions import (
    BlenderVersion,
    archive_name,
    load_versions,
    parse_version,
    release_path,
    series,
)
from provisioner.config import REPO_ROOT
from provisioner.errors import BlenderError, ConfigError

SHA = "1497f83f93e9bbbde745422c795ed10fe15f92f5622b4421768f149fbe776981"
URL = "https://download.blender.org/release/Blender3.4/blender-3.4.1-linux-x64.tar.xz"

GOOD = f"""\
format: 1
versions:
  "3.4.1":
    linux-x64:
      url: {URL}
      sha256: {SHA}
    macos-arm64:
      url: https://download.blender.org/release/Blender3.4/blender-3.4.1-macos-arm64.dmg
      sha256: null
    apt:
      package: blender
      version: 3.4.1+dfsg-2+b1
      distro: debian-12
  "4.2.3":
    linux-x64:
      url: https://download.blender.org/release/Blender4.2/blender-4.2.3-linux-x64.tar.xz
      sha256: 3a64efd1982465395abab4259b4091d5c8c56054c7267e9633e4f702a71ea3f4
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "blender_versions.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "parsed", "series_"),
    [("3.4.1", BlenderVersion(3, 4, 1), "3.4"), ("4.5.14", BlenderVersion(4, 5, 14), "4.5"), ("10.0.0", None, "10.0")],
)
def test_parse_version(text: str, parsed: BlenderVersion | None, series_: str) -> None:
    v = parse_version(text)
    if parsed is not None:
        assert v == parsed
    assert str(v) == text
    assert v.series == series_ == series(text)


@pytest.mark.parametrize("bad", ["3.4", "3.4.1.2", "v3.4.1", "3.4.x", "03.4.1", "", "3.4.1 LTS", "../3.4.1"])
def test_parse_version_refuses(bad: str) -> None:
    with pytest.raises(BlenderError, match="not a Blender version"):
        parse_version(bad)


def test_versions_order_numerically() -> None:
    assert sorted(["4.10.0", "4.2.3", "3.6.17"], key=parse_version) == ["3.6.17", "4.2.3", "4.10.0"]


def test_release_layout() -> None:
    assert archive_name("3.4.1") == "blender-3.4.1-linux-x64.tar.xz"
    assert release_path("3.4.1") == "release/Blender3.4/blender-3.4.1-linux-x64.tar.xz"


def test_good_file(tmp_path: Path) -> None:
    vf = load_versions(write(tmp_path, GOOD))
    assert vf.known() == ["3.4.1", "4.2.3"]
    entry = vf.entry("3.4.1")
    assert entry.linux_x64.sha256 == SHA
    assert entry.download("macos-arm64") is not None and entry.download("macos-arm64").sha256 is None  # type: ignore[union-attr]
    assert entry.download("windows-x64") is None
    assert entry.apt is not None and entry.apt.spec == "blender=3.4.1+dfsg-2+b1"
    assert entry.apt.binary == "/usr/bin/blender"


def test_unknown_version_names_file_and_known_versions(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD)
    with pytest.raises(BlenderError) as err:
        load_versions(path).entry("9.9.9")
    assert str(path) in err.value.message
    assert "3.4.1, 4.2.3" in err.value.message


def test_real_versions_file_validates() -> None:
    vf = load_versions(REPO_ROOT / "blender_versions.yaml")
    expected = {
        "2.93.18": "f87f73f27d2e9e5b876eaa57af44902067f4c331d1e1cdf400233a64da1c367b",
        "3.3.21": "2af68b71c6bb24e2d3e21a3e2db39ac7d736b6c7843c049089efea83ccf1f18d",
        "3.4.1": SHA,
        "3.6.17": "88b11f398d95ffa95688eaf30cf3d6605394add0b15f159bd33024b0a3d239e7",
        "4.1.1": "ab2ea3fe991601a5e6bd2cda786ecaa919c0b39e0550e59978b5d40270c260d3",
        "4.2.3": "3a64efd1982465395abab4259b4091d5c8c56054c7267e9633e4f702a71ea3f4",
        "4.3.1": "f824324f3ae2223dc672c9cea0141055b5129a394119545ee0c84dea92e78361",
        "4.5.14": "9ba871ff2ecd36526b77432745980b7e6664ecd0c7ca11c48849073dcfe06da3",
    }
    assert vf.known() == list(expected)
    for version, sha in expected.items():
        dl = vf.entry(version).linux_x64
        assert dl.sha256 == sha
        assert dl.url == f"https://download.blender.org/{release_path(version)}"
    pin = vf.entry("3.4.1").apt
    assert pin is not None and pin.version == "3.4.1+dfsg-2+b1"


BAD_CASES = {
    "malformed YAML": ('versions:\n  "3.4.1": [unclosed\n', r"not valid YAML at line \d+"),
    "missing sha256": (GOOD.replace(f"      sha256: {SHA}\n", ""), r"versions\.3\.4\.1\.linux-x64\.sha256: missing"),
    "bad sha256": (GOOD.replace(SHA, "abc123"), r"versions\.3\.4\.1\.linux-x64\.sha256: 'abc123' is not a sha256"),
    "sha256 read as a number": (
        GOOD.replace(SHA, "0" * 64),
        r"linux-x64\.sha256: 0 is not text \(write it in quotes\)",
    ),
    "upper-case sha256": (GOOD.replace(SHA, SHA.upper()), r"versions\.3\.4\.1\.linux-x64\.sha256: .* is not a sha256"),
    "unknown platform": (
        GOOD.replace("    macos-arm64:", "    linux-arm64:"),
        r"versions\.3\.4\.1\.linux-arm64: unknown platform 'linux-arm64'",
    ),
    "duplicate version": (
        GOOD + f'  "3.4.1":\n    linux-x64:\n      url: {URL}\n      sha256: {SHA}\n',
        r"duplicate key '3\.4\.1' at line 18 \(first at line 3\)",
    ),
    "duplicate nested key": (
        GOOD.replace(f"      sha256: {SHA}\n", f"      sha256: {SHA}\n      sha256: {SHA}\n"),
        r"duplicate key 'sha256'",
    ),
    "missing linux-x64": (
        'versions:\n  "3.4.1":\n    apt: {package: blender, version: 3.4.1+dfsg-2}\n',
        r"versions\.3\.4\.1\.linux-x64: missing",
    ),
    "version key not X.Y.Z": (GOOD.replace('"4.2.3":', '"4.2":'), r"versions\.4\.2: version key '4\.2' is not X\.Y\.Z"),
    "unquoted float key": (GOOD.replace('"4.2.3":', "4.2:"), r"versions\.4\.2: version key 4\.2 is not X\.Y\.Z"),
    "url of another version": (
        GOOD.replace("blender-4.2.3-linux-x64", "blender-4.2.2-linux-x64"),
        r"versions\.4\.2\.3\.linux-x64\.url: names 'blender-4\.2\.2-linux-x64\.tar\.xz'",
    ),
    "url not http": (
        GOOD.replace(URL, "ftp://example.org/blender-3.4.1-linux-x64.tar.xz"),
        r"versions\.3\.4\.1\.linux-x64\.url: 'ftp://.*' is not an http\(s\) URL",
    ),
    "apt pin of another version": (
        GOOD.replace("3.4.1+dfsg-2+b1", "3.4.10+dfsg-1"),
        r"versions\.3\.4\.1\.apt\.version: '3\.4\.10\+dfsg-1' is not a package of Blender 3\.4\.1",
    ),
    "unknown apt key": (
        GOOD.replace("      distro: debian-12\n", "      suite: bookworm\n"),
        r"apt\.suite: unknown key",
    ),
    "unknown top-level key": (GOOD + "mirrors: []\n", r"mirrors: unknown key"),
    "newer format": (GOOD.replace("format: 1", "format: 2"), r"format: 2 is not a format this renderdev reads"),
    "no versions": ("format: 1\nversions: {}\n", r"versions: lists no version"),
    "not a mapping": ("- 3.4.1\n", r"expected a mapping with a 'versions' key"),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_malformed_file_names_the_key(tmp_path: Path, case: str) -> None:
    text, pattern = BAD_CASES[case]
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=pattern) as err:
        load_versions(path)
    assert err.value.message.startswith(str(path))
    assert err.value.hint is not None and str(path) in err.value.hint


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the Blender versions file"):
        load_versions(tmp_path / "nope.yaml")

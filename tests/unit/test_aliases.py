from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provisioner.aliases import (
    BLOCK_BEGIN,
    FUNCTIONS,
    aliases_path,
    check_aliases,
    plan_aliases,
    remove_aliases,
    render_aliases,
)
from provisioner.config import load_settings
from provisioner.console import make_console
from provisioner.errors import HostWriteError
from provisioner.plan import apply_steps


@pytest.fixture
def settings(tmp_path: Path):  # type: ignore[no-untyped-def]
    home = tmp_path / "home"
    home.mkdir()
    (home / ".bashrc").write_text("export KEEP=1\n")
    return load_settings(
        state_dir=tmp_path / "state",
        aliases_file=tmp_path / "cfg" / "aliases.sh",
        rc_files=[home / ".bashrc", home / ".zshrc"],
    )


def _apply(settings, **kw):  # type: ignore[no-untyped-def]
    return apply_steps(make_console(), plan_aliases(settings, **kw), dry_run=False)


def test_rendering_is_stable_and_holds_no_password(settings) -> None:  # type: ignore[no-untyped-def]
    settings.secrets_file.parent.mkdir(parents=True)
    settings.secrets_file.write_text("REDIS_PASSWORD=s3cret-value\nPOSTGRES_PASSWORD=other-s3cret\n")
    text = render_aliases(settings)
    assert text == render_aliases(settings)
    assert "s3cret" not in text
    for fn in FUNCTIONS:
        assert f"{fn}()" in text


def test_aliases_file_is_valid_bash_and_defines_functions(settings) -> None:  # type: ignore[no-untyped-def]
    _apply(settings)
    out = subprocess.run(
        ["bash", "-c", f". {settings.aliases_file} && declare -F"], capture_output=True, text=True, check=True
    ).stdout
    for fn in FUNCTIONS:
        assert f"declare -f {fn}" in out


def test_apply_then_rerun_changes_nothing(settings) -> None:  # type: ignore[no-untyped-def]
    first = _apply(settings)
    assert first.changed  # file + bashrc block
    bashrc = settings.rc_files[0].read_text()
    assert bashrc.startswith("export KEEP=1\n")
    assert bashrc.count(BLOCK_BEGIN) == 1
    assert not settings.rc_files[1].exists()  # no zshrc is created for a bash user
    second = _apply(settings)
    assert second.changed == []
    assert settings.rc_files[0].read_text() == bashrc
    assert all(c.ok for c in check_aliases(settings))


def test_zshrc_gets_the_block_when_it_exists(settings) -> None:  # type: ignore[no-untyped-def]
    settings.rc_files[1].write_text("")
    _apply(settings)
    assert BLOCK_BEGIN in settings.rc_files[1].read_text()


def test_foreign_aliases_file_is_refused_without_force(settings) -> None:  # type: ignore[no-untyped-def]
    settings.aliases_file.parent.mkdir(parents=True)
    settings.aliases_file.write_text("alias mine=true\n")
    with pytest.raises(HostWriteError) as err:
        plan_aliases(settings)
    assert str(settings.aliases_file) in str(err.value) and "--force" in str(err.value)
    assert settings.aliases_file.read_text() == "alias mine=true\n"
    _apply(settings, force=True)
    assert settings.aliases_file.read_text() == render_aliases(settings)


def test_remove_takes_only_ours(settings) -> None:  # type: ignore[no-untyped-def]
    _apply(settings)
    removed = remove_aliases(settings)
    assert len(removed) == 2
    assert settings.rc_files[0].read_text() == "export KEEP=1\n"
    assert not settings.aliases_file.exists()
    assert remove_aliases(settings) == []
    assert not all(c.ok for c in check_aliases(settings))


def test_a_second_project_gets_its_own_file_and_conf_switches_between_them(settings) -> None:  # type: ignore[no-untyped-def]
    other = settings.model_copy(update={"project": "b", "api_port": 18123})
    _apply(settings)
    first = settings.aliases_file.read_text()
    bashrc = settings.rc_files[0].read_text()
    second = _apply(other)
    assert len(second.changed) == 1 and str(aliases_path(other)) in second.changed[0]
    assert aliases_path(other) == settings.aliases_file.with_name("aliases-b.sh")
    assert settings.aliases_file.read_text() == first  # project a's functions are untouched
    assert settings.rc_files[0].read_text() == bashrc  # new shells still start on the first project
    assert _apply(other).changed == []
    assert all(c.ok for c in check_aliases(other))

    script = f"""
    . {settings.aliases_file}
    declare -f _renderdev_invoke | grep -o 'RENDERDEV_PROJECT=[a-z]*'
    conf b
    declare -f _renderdev_invoke | grep -o 'RENDERDEV_PROJECT=[a-z]*'
    conf renderdev >/dev/null
    declare -f _renderdev_invoke | grep -o 'RENDERDEV_PROJECT=[a-z]*'
    conf nope || echo refused
    """
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.split() == [
        "RENDERDEV_PROJECT=renderdev",
        "renderdev:", "project", "b", "(api", "http://127.0.0.1:18123)",
        "RENDERDEV_PROJECT=b",
        "RENDERDEV_PROJECT=renderdev",
        "refused",
    ]  # fmt: skip
    assert "no aliases for project nope; run: RENDERDEV_PROJECT=nope invoke setup" in done.stderr

    assert remove_aliases(other) == [f"aliases file {aliases_path(other)}"]  # a's block and file stay
    assert settings.rc_files[0].read_text() == bashrc and settings.aliases_file.read_text() == first

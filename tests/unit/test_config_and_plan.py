from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from provisioner.config import load_settings
from provisioner.console import make_console
from provisioner.errors import CommandError, ConfigError
from provisioner.plan import Step, StepState, apply_steps, report
from provisioner.proc import run


def test_defaults_need_no_file_or_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    s = load_settings()
    assert s.project == "renderdev"
    assert s.blender_link == Path("/usr/bin/blender")
    assert s.bind_host == "127.0.0.1"


def test_precedence_file_env_kwargs(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "renderdev.toml").write_text('project = "fromfile"\nredis_port = 7000\napi_port = 7001\n')
    s = load_settings()
    assert (s.project, s.redis_port) == ("fromfile", 7000)
    monkeypatch.setenv("RENDERDEV_REDIS_PORT", "7100")
    s = load_settings()
    assert s.redis_port == 7100 and s.project == "fromfile"
    s = load_settings(redis_port=7200, api_port=None)
    assert s.redis_port == 7200 and s.api_port == 7001


@pytest.mark.parametrize(
    ("key", "value", "named"),
    [
        ("redis_port", "0", "redis_port"),
        ("db_port", "70000", "db_port"),
        ("project", "Bad Name", "project"),
        ("blender_source", "ftp", "blender_source"),
        ("nonsense_key", "1", "nonsense_key"),
    ],
)
def test_bad_settings_name_the_key(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, key: str, value: str, named: str
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "renderdev.toml").write_text(f'{key} = "{value}"\n')
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert named in str(err.value)


def test_project_file_that_is_not_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "renderdev.toml").write_text("this is = = not toml")
    with pytest.raises(ConfigError) as err:
        load_settings()
    assert "renderdev.toml" in str(err.value)


def test_plan_applies_only_needed_steps_and_dry_run_applies_none() -> None:
    done: list[str] = []
    steps = [
        Step("x", "already", StepState.OK),
        Step("x", "todo", StepState.CHANGE, apply=lambda: done.append("todo") or "did it"),
    ]
    out = apply_steps(make_console(), steps, dry_run=True)
    assert done == [] and out.changed == [] and out.already_right == ["x: already"]
    out = apply_steps(make_console(), steps, dry_run=False)
    assert done == ["todo"] and out.changed == ["x: todo (did it)"]


def test_report_says_nothing_changed(capsys: pytest.CaptureFixture[str]) -> None:
    out = apply_steps(make_console(), [Step("x", "a", StepState.OK)], dry_run=False)
    report(make_console(), out, dry_run=False)
    assert "Nothing changed" in capsys.readouterr().out


def test_command_error_carries_command_code_and_stderr_tail() -> None:
    with pytest.raises(CommandError) as err:
        run([sys.executable, "-c", "import sys; print('x'*3, file=sys.stderr); sys.exit(3)"])
    assert err.value.returncode == 3
    assert "xxx" in err.value.stderr_tail
    assert "exit 3" in str(err.value)


def test_missing_command_is_a_command_error() -> None:
    with pytest.raises(CommandError) as err:
        run(["renderdev-no-such-command"])
    assert err.value.returncode == 127


def test_host_lock_serialises_and_says_it_waits(tmp_path: Path) -> None:
    lock = tmp_path / "setup.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys,time; from provisioner.lock import host_lock; from provisioner.console import make_console\n"
            f"with host_lock(__import__('pathlib').Path({str(lock)!r}), make_console()):\n"
            "    print('held', flush=True); time.sleep(1.5)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    from provisioner.lock import host_lock

    console = make_console()
    with console.capture() as cap:
        t0 = time.monotonic()
        with host_lock(lock, console):
            waited = time.monotonic() - t0
    holder.wait(timeout=10)
    assert "Waiting for another invoke setup" in cap.get()
    assert f"pid {holder.pid}" in cap.get()
    assert waited > 0.2  # it really waited for the holder to let go

"""What a Blender process's output and files are made into: the failure line, the tail, the argv, the PNG size."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import pytest

from renderfarm.errors import BlenderRenderError, RenderfarmError
from renderfarm.png import png_size
from renderfarm.quality import RenderProfile
from renderfarm.worker.blender_process import blender_command, failure_reason, output_tail


def _png(width: int, height: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + b"\x00\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def test_png_size(tmp_path: Path) -> None:
    path = tmp_path / "a.png"
    path.write_bytes(_png(7, 3))
    assert png_size(path) == (7, 3)


@pytest.mark.parametrize("content", [b"", b"GIF89a" + b"\x00" * 30, b"\x89PNG\r\n\x1a\n" + b"\x00" * 4])
def test_png_size_refuses_other_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "not.png"
    path.write_bytes(content)
    with pytest.raises(RenderfarmError, match="not a PNG image"):
        png_size(path)


BLENDER_TRACEBACK = """\
Blender 3.4.1
renderfarm-scene: error: camera target equals camera position: [1.0, 2.0, 3.0]
Error: Python: Traceback (most recent call last):
  File "/x/blender_scene.py", line 250, in <module>
    main(sys.argv)
SceneError: camera target equals camera position: [1.0, 2.0, 3.0]

Error: script failed, file: '/x/blender_scene.py', exiting.
"""


def test_failure_reason_prefers_the_script_line() -> None:
    assert failure_reason(BLENDER_TRACEBACK, 1) == "camera target equals camera position: [1.0, 2.0, 3.0]"


def test_failure_reason_falls_back_to_the_exception_line() -> None:
    text = BLENDER_TRACEBACK.replace("renderfarm-scene: error: camera", "(no marker) camera")
    assert failure_reason(text, 1) == "SceneError: camera target equals camera position: [1.0, 2.0, 3.0]"


def test_failure_reason_blender_error_and_signals() -> None:
    assert failure_reason("Fra:1 Mem:1M\nError: Build without OpenImageDenoiser\n", 1) == (
        "Error: Build without OpenImageDenoiser"
    )
    assert failure_reason("Blender 3.4.1\n", -9) == "blender was killed by SIGKILL"
    assert failure_reason("", 3) == "blender exited with code 3"


def test_output_tail_drops_progress_lines() -> None:
    text = "Blender 3.4.1\n" + "".join(f"Fra:1 Mem:12M | Sample {i}/64\n" for i in range(64)) + "Error: boom\n"
    assert output_tail(text) == "Blender 3.4.1\nError: boom"
    assert output_tail("\n".join(str(i) for i in range(50)), lines=3) == "47\n48\n49"


def test_blender_command_is_an_argv_list() -> None:
    argv = blender_command(
        "/usr/bin/blender", Path("/s.py"), Path("/t/scene.json"), Path("/o.png"), RenderProfile(640, 360, 4), 7
    )
    assert argv[:8] == [
        "/usr/bin/blender",
        "-b",
        "--factory-startup",
        "-noaudio",
        "--python-exit-code",
        "1",
        "--python",
        "/s.py",
    ]
    assert argv[8:] == [
        "--",
        "--scene",
        "/t/scene.json",
        "--out",
        "/o.png",
        "--width",
        "640",
        "--height",
        "360",
        "--samples",
        "4",
        "--seed",
        "7",
    ]


def test_blender_render_error_carries_command_code_and_tail() -> None:
    err = BlenderRenderError(["blender", "-b"], 1, "line one\nline two", reason="it broke")
    assert (err.argv, err.returncode, err.output_tail, err.reason) == (
        ["blender", "-b"],
        1,
        "line one\nline two",
        "it broke",
    )
    assert str(err) == "blender render failed (exit 1): it broke\n  command: blender -b\n  | line one\n  | line two"
    assert isinstance(err, RenderfarmError)
    assert "did not start" in str(BlenderRenderError(["blender"], None, "", reason="not found"))

"""Pair 3: installing Blender from the loopback HTTP mirror vs `tar -I 'xz -T0' -xf` of the same archive.

A: `python -m invoke blender --version V --source mirror --mirror URL --versions-file F --install-root R
--link L`, a subprocess, with a fresh install root and link each run: interpreter start, the download
(hashed as it arrives, sha256 checked), extraction with the tar-slip checks, `blender --version`, the
metadata file, the rename into place and the link.
B: `tar -I 'xz -T0' -xf ARCHIVE -C D` into a fresh folder: the fastest a person would type, decoding on every core
as renderdev does (a single-threaded `tar -xJf` would flatter renderdev). The archive has a real release's shape
(thousands of files and folders, library links: bench.mirror.build_release), so renderdev's per-entry checks are paid
for.
Each run's folder is removed after it, outside the timing.
"""

from __future__ import annotations

import itertools
import os
import shutil

from bench.errors import BenchError
from bench.harness import Goal, GoalKind, PairResult, PairSpec, run_pair
from bench.proc import run
from bench.stack import BenchStack, Log

NAME = "install"
TIMEOUT = 600.0


def measure(stack: BenchStack, *, pairs: int, warmup: int, log: Log) -> PairResult:
    mirror = stack.mirror
    work = stack.root / "installs"
    counter = itertools.count(1)

    def from_mirror() -> float:
        folder = work / f"a{next(counter)}"
        root, link = folder / "blender", folder / "bin" / "blender"
        seconds, _ = stack.invoke(
            "blender", "--version", mirror.version, "--source", "mirror", "--mirror", mirror.url,
            "--versions-file", str(mirror.versions_file), "--install-root", str(root), "--link", str(link),
            timeout=TIMEOUT,
        )  # fmt: skip
        if os.readlink(link) != str(root / mirror.version / "blender") or not link.exists():
            raise BenchError(f"invoke blender exited 0 but {link} is not a link to the install in {root}")
        shutil.rmtree(folder)
        return seconds

    def tar_x() -> float:
        folder = work / f"b{next(counter)}"
        folder.mkdir(parents=True)
        argv = ["tar", "-I", "xz -T0", "-xf", str(mirror.archive), "-C", str(folder)]
        seconds, _ = run(argv, env=stack.env, timeout=TIMEOUT)
        shutil.rmtree(folder)
        return seconds

    spec = PairSpec(
        name=NAME,
        title="install from a loopback HTTP mirror vs tar -I 'xz -T0' -xf of the same archive",
        a_label="python -m invoke blender --source mirror (http://127.0.0.1)",
        b_label="tar -I 'xz -T0' -xf",
        a=from_mirror,
        b=tar_x,
        goal=Goal(1.10, GoalKind.AT_MOST),
    )
    result = run_pair(spec, pairs=pairs, warmup=warmup, log=log)
    size = mirror.archive.stat().st_size
    result.notes.append(f"archive: {mirror.archive.name}, {size / 1e6:.1f} MB xz -0; unpacked: {mirror.shape}")
    return result

# mypy: ignore-errors
"""A warm Blender: loaded once, it renders job after job fed to it over a pipe. Runs INSIDE Blender.

    blender -b --factory-startup -noaudio --python blender_server.py -- --requests FD --responses FD

Protocol (one JSON object per line; Blender's own chatter goes to stdout/stderr, never to these fds):
  -> {"scene": PATH, "out": PATH, "width": W, "height": H, "samples": N, "seed": S}
  <- {"ready": true, "pid": PID}                       once, when loaded
  <- {"ok": true, "kept": K, "seconds": T} | {"ok": false, "error": MESSAGE, "traceback": TEXT, "seconds": T}
End of the request stream ends the server. Each job starts from factory settings (blender_scene.render_spec),
unless its scene is the last one's with only the camera moved: then the built scene is kept (K true).
"""

import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blender_scene  # noqa: E402 - the sibling script, imported as a module inside Blender


def fds(argv):
    args = argv[argv.index("--") + 1 :]
    return int(args[args.index("--requests") + 1]), int(args[args.index("--responses") + 1])


def serve(requests_fd, responses_fd):
    with os.fdopen(requests_fd, "r") as requests, os.fdopen(responses_fd, "w") as responses:

        def answer(message):
            responses.write(json.dumps(message) + "\n")
            responses.flush()

        answer({"ready": True, "pid": os.getpid()})
        for line in requests:
            started = time.monotonic()
            try:
                req = json.loads(line)
                spec = json.loads(Path(req["scene"]).read_text(encoding="utf-8"))
                kept = blender_scene.render_spec(
                    spec,
                    Path(req["out"]),
                    int(req["width"]),
                    int(req["height"]),
                    int(req["samples"]),
                    int(req["seed"]),
                    keep=True,
                    rows=req.get("rows"),
                )
                reply = {"ok": True, "kept": kept}
            except Exception as exc:
                reply = {"ok": False, "error": str(exc), "traceback": traceback.format_exc()[-4000:]}
            reply["seconds"] = round(time.monotonic() - started, 3)
            sys.stdout.flush()
            answer(reply)


serve(*fds(sys.argv))

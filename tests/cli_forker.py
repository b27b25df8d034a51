"""Run ``ocrquant`` command lines as processes forked from one interpreter that imported the CLI once.

Why: a hostile-input case is a whole command run as a user runs it (its own process, exit code,
stderr), and most cases fail on their input within milliseconds; starting Python and importing the
CLI, onnxruntime, onnx and OpenCV for each of them was most of the corpus' time. Here a server process
imports them once and forks a child per command line: the child gets the case's environment, argv and
its own stdout/stderr files, runs :func:`ocrquant.cli.main.main` (the console entry point, signal
handler and error boundary included) and exits with its code. The server is single-threaded when it
forks, so the child inherits no half-held lock.

Protocol (one JSON object per line): the request ``{"argv": [...], "env": {...}, "stdout": path,
"stderr": path, "timeout": seconds}`` on stdin; the reply ``{"rc": code}`` (``null`` when the child ran
past its timeout and was killed) on stdout.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
import traceback

import cv2  # noqa: F401  (imported once here, inherited by every child)
import onnx  # noqa: F401
import onnxruntime  # noqa: F401

from ocrquant.cli import main as cli


def _child(request: dict) -> None:
    """In the forked child: become the command line, never return."""
    code = 1
    try:
        write = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
        streams = ((0, os.devnull, os.O_RDONLY), (1, request["stdout"], write), (2, request["stderr"], write))
        for fd, path, flags in streams:
            target = os.open(path, flags, 0o644)
            os.dup2(target, fd)
            os.close(target)
        os.environ.update(request["env"])
        sys.argv = ["ocrquant", *request["argv"]]
        try:
            cli.main()
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # what escapes the entry point is a crash: its traceback is the evidence
        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _run(request: dict) -> int | None:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        _child(request)
    deadline = time.monotonic() + float(request["timeout"])
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.005)


def serve() -> None:
    """Register every command (importing its module), then answer requests until stdin closes."""
    cli.register_commands(None)
    for line in sys.stdin:
        if line.strip():
            print(json.dumps({"rc": _run(json.loads(line))}), flush=True)


if __name__ == "__main__":
    serve()

"""The installed `streamer` command and `python -m streamer`: `main()`, then leave without tearing
the interpreter's modules down.

Tearing torch's modules down at exit costs about half a second after every command on the 2-core
CPU (`python -c "import cv2, av, torch"`: 1.74 s; 1.22 s leaving once the exit handlers ran), a
tenth of a short transcode. Everything registered to run at exit still runs: the interpreter joins
the threads, then runs the handlers last-registered first, and the handler that leaves is
registered before any other (logging's flush, temporary folders' removal, Ray's shutdown all run
ahead of it). Only the teardown of modules is skipped: memory the OS takes back anyway.
"""

from __future__ import annotations

import atexit
import os
import sys

UNFINISHED = 1  # the exit code when main() did not return (an error escaped it)


def run() -> None:
    code = UNFINISHED

    def leave() -> None:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):  # closed, or a pipe whose reader left
                pass
        os._exit(code)

    atexit.register(leave)
    from streamer.cli.main import main

    code = main()
    sys.exit(code)

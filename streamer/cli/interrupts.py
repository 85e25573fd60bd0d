"""Ctrl-C and SIGTERM: the first stops the run cleanly, a second one leaves at once.

The first raises KeyboardInterrupt in the main thread: the engine stops (a live run ends
normally, a file's outputs are finalised as partial) and the command exits. A second, while that
cleanup still runs, restores the terminal and leaves with os._exit(130): the person asked twice.

The handlers are installed explicitly: a process started as a background job of a script (or by
some supervisors) inherits SIGINT as ignored. Nothing here is Unix-only at import time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

EXIT_INTERRUPTED = 130


class Interrupts:
    """The signal handler; counts the stops a person asked for."""

    def __init__(self) -> None:
        self.count = 0
        self.terminal = saved_terminal()

    def __call__(self, signum, frame) -> None:
        self.count += 1
        if self.count > 1:
            self.leave_now("interrupted again: leaving now; unfinished outputs keep their .partial names")
        raise KeyboardInterrupt

    def leave_now(self, message: str, code: int = EXIT_INTERRUPTED) -> None:
        """Exit without waiting for any thread (a model load, a forward pass, a flush)."""
        restore_terminal(self.terminal)
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        if message:
            os.write(2, f"\n{message}\n".encode())
        os._exit(code)


_handler: Interrupts | None = None


@contextlib.contextmanager
def installed() -> Iterator[Interrupts]:
    """The handlers for one command, and the caller's put back after it: `main()` also runs in
    a process that goes on (tests, a script calling it), where a count left from one command
    would turn the next command's first Ctrl-C into a forced exit."""
    global _handler
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    _handler = Interrupts()
    for sig in previous:
        signal.signal(sig, _handler)
    try:
        yield _handler
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)
        _handler = None


def finish(code: int) -> int:
    """After a command a person stopped: a model thread still busy (a load, a download, the batch
    in flight) holds nothing of the user's (the outputs were finalised before the command
    returned), so the process leaves now instead of waiting for it at interpreter exit."""
    if _handler is not None and _handler.count and model_busy():
        _handler.leave_now("", code)
    return code


def model_busy() -> bool:
    engine = sys.modules.get("streamer.engine.worker")  # not imported: no model thread ever ran
    return engine is not None and engine.busy()


def saved_terminal():
    """The terminal's settings (POSIX, when stdin is one), to put back on a forced exit."""
    try:
        import termios

        return termios.tcgetattr(sys.stdin.fileno()) if sys.stdin.isatty() else None
    except (ImportError, OSError, ValueError, AttributeError):
        return None


def restore_terminal(saved) -> None:
    if saved is None:
        return
    try:
        import termios

        termios.tcsetattr(sys.stdin.fileno(), termios.TCSANOW, saved)
    except (ImportError, OSError, ValueError):
        pass
    try:
        sys.stderr.write("\x1b[?25h")  # the cursor, if a progress bar hid it
    except (OSError, ValueError):
        pass

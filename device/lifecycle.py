"""Leaving the daemon's process once it has shut down cleanly, without interpreter finalization.

Why not simply return from main: camera threads may be inside FFmpeg when the daemon stops.
`cv2.VideoCapture` on a silent stream waits up to its open timeout (sources.OPEN_TIMEOUT_MS), and
OpenCV serializes FFmpeg opens, so with several dead cameras one is always waiting; nothing in
Python can interrupt it. If the interpreter is finalizing when such a thread comes back, the
thread cannot take the GIL any more and CPython ends it with pthread_exit. The forced unwinding
this starts runs through OpenCV's C++ frames, which do not let it pass, and the C++ runtime calls
std::terminate: "terminate called without an active exception", SIGABRT, exit status 134. The
supervisor (systemd, Greengrass) then sees a crash instead of a clean stop. Measured: eight
cameras on a silent loopback RTSP server, SIGTERM timed so an open returned during finalization,
aborted every time; `faulthandler` shows the main thread with no Python frame left (finalizing).

So once the daemon has finished its own shutdown (sources stopped, open defects ended, sinks
flushed, `offline` published), `exit_process` does what finalization would still have done for
us that matters -- non-daemon threads get a bounded wait, atexit handlers run, logs and stdio are
flushed -- and then leaves with `os._exit`, which runs no finalizer and no C++ static destructor
while native threads are still busy. The kernel ends those threads with the process.
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import NoReturn

log = logging.getLogger(__name__)

THREAD_GRACE_S = 1.0  # non-daemon threads still running after the shutdown get this long, in all


def run_then_exit(run: Callable[[], int]) -> NoReturn:
    """Run the daemon (its own `finally` does the clean shutdown), then `exit_process` with its
    exit code; an unexpected exception is logged and gives exit code 1."""
    try:
        code = run()
    except Exception:
        log.exception("the daemon failed")
        code = 1
    exit_process(code)


def exit_process(code: int, grace_s: float = THREAD_GRACE_S) -> NoReturn:
    """Flush what is still buffered and end the process now, skipping interpreter finalization."""
    try:
        _join_non_daemon_threads(time.monotonic() + grace_s)
        atexit._run_exitfuncs()  # what Py_Finalize would run first (logging.shutdown is one of them)
        logging.shutdown()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # a closed or broken pipe must not keep us from leaving
                pass
        os._exit(code if isinstance(code, int) and 0 <= code <= 255 else 1)


def _join_non_daemon_threads(deadline: float) -> None:
    """Interpreter exit waits for non-daemon threads; we wait too, but not forever."""
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is current or thread.daemon or thread is threading.main_thread():
            continue
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            log.warning("thread %s still running at exit", thread.name)

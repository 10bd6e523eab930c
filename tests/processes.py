"""Stopping a server process a test started: the signal, a bounded wait, a kill if it hangs."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen, sig: int, timeout: float) -> tuple[int | None, str]:
    """Send ``sig`` and wait up to ``timeout`` s; returns the exit code (None: it had to be killed)
    and the rest of its stderr."""
    proc.send_signal(sig)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = None
    return code, proc.stderr.read()

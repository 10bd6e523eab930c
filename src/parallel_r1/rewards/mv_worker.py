"""The math-verify worker process: reads ``[predicted, gold]`` JSON lines on stdin, answers each
with one JSON line ``["ok", bool]`` or ``["error", message]``; started and killed by ``sandbox.py``.

Run as ``python -m parallel_r1.rewards.mv_worker [PARENT_PID]``. It prints ``["ready", null]`` once
math-verify is imported, so start-up time never counts against a check's timeout.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys


def math_verify_equal(predicted: str, gold: str) -> bool:
    """math-verify's answer equivalence, its signal-based timeouts switched off (the parent bounds it
    by killing this process). Each side is parsed as LaTeX inside ``$..$`` unless it carries ``$``."""
    from math_verify import parse, verify

    def wrap(s: str) -> str:
        return s if "$" in s else f"${s}$"

    gold_parsed = parse(wrap(gold), parsing_timeout=None)
    pred_parsed = parse(wrap(predicted), parsing_timeout=None)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=None))


def _die_with_parent(expected_parent: int) -> None:
    """Linux: ask the kernel to SIGKILL us when the parent goes. An idle worker would see EOF on stdin
    anyway, but one stuck in a long C-level computation (a huge power) holds the GIL, so no Python
    watchdog could run. The kernel ties this to the parent *thread*, which is why ``sandbox.py``
    starts workers from one long-lived launcher thread. Elsewhere: no-op."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != expected_parent:  # the parent died before prctl took effect
        os._exit(1)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if len(sys.argv) > 1:
        _die_with_parent(int(sys.argv[1]))
    # Keep the protocol channel private: anything a library prints goes to stderr instead.
    channel = os.fdopen(os.dup(sys.stdout.fileno()), "w", encoding="utf-8")
    sys.stdout = sys.stderr
    import math_verify  # noqa: F401  (imported before "ready")

    # math-verify warns once that its timeouts are off, and logs parse failures; both are expected.
    logging.getLogger("math_verify").setLevel(logging.ERROR)
    logging.getLogger("latex2sympy2_extended").setLevel(logging.ERROR)

    def reply(message: list) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    reply(["ready", None])
    for line in sys.stdin:
        predicted, gold = json.loads(line)
        try:
            reply(["ok", math_verify_equal(predicted, gold)])
        except Exception as e:  # sent to the caller, who records it in the verdict's errors
            reply(["error", f"{type(e).__name__}: {e}"])


if __name__ == "__main__":
    main()

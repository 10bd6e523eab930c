"""Start ``parallel-r1 serve MODEL --port 0`` on 127.0.0.1, send one completion request, stop it with
SIGINT and require a clean exit. Used by ``scripts/test_wheel.sh`` against an installed wheel, so it
imports nothing from the package: usage ``python scripts/serve_check.py PARALLEL_R1_EXE MODEL_DIR``.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import urllib.request

START_TIMEOUT_S = 300  # model load on a busy 2-core machine


def wait_for_url(proc: subprocess.Popen) -> str:
    """The base URL from serve's start line ("serving ... at http://127.0.0.1:PORT/v1")."""
    assert proc.stderr is not None
    for line in proc.stderr:
        sys.stderr.write(line)
        if line.startswith("serving ") and " at http://127.0.0.1:" in line:
            return line.rsplit(" at ", 1)[1].strip()
    raise SystemExit(f"serve exited before it started serving (exit {proc.wait()})")


def complete(url: str) -> dict:
    body = json.dumps({"prompt": "Tom has 3 apples and buys 4 more. How many now?", "max_tokens": 32}).encode()
    request = urllib.request.Request(f"{url}/completions", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


def main(exe: str, model: str) -> None:
    cmd = [exe, "serve", model, "--port", "0", "--quiet", "--threads", "1"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(START_TIMEOUT_S, proc.kill)  # a server that never starts fails the check
    watchdog.start()
    try:
        url = wait_for_url(proc)
        watchdog.cancel()
        answer = complete(url)
        choice = answer["choices"][0]
        assert isinstance(choice["text"], str) and answer["usage"]["completion_tokens"] > 0, answer
        print(f"serve answered: finish_reason={choice['finish_reason']}, "
              f"{answer['usage']['completion_tokens']} tokens")  # fmt: skip
    finally:
        watchdog.cancel()
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=60)
    if code != 0:
        raise SystemExit(f"serve did not stop cleanly on SIGINT (exit {code})")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python scripts/serve_check.py PARALLEL_R1_EXE MODEL_DIR", file=sys.stderr)
        raise SystemExit(2)
    main(sys.argv[1], sys.argv[2])

"""`frugalserve serve` on the quickstart, stopped with Ctrl-C and started again on the same state
directory: the usage and the remaining budget carry over, and `frugalserve usage` shows them.
(Runs before the session's shared Ray starts: it starts and stops its own.)"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import openai
import pytest

from tests.serving.conftest import free_port

pytestmark = pytest.mark.serving
QUICKSTART = Path(__file__).parents[2] / "examples" / "quickstart.yaml"


@contextmanager
def frugalserve_serve(state: Path, port: int) -> Iterator[str]:
    """Run `frugalserve serve` until it prints its URL; Ctrl-C it afterwards."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "frugalserve.cli", "serve", "-f", str(QUICKSTART),
         "--state-dir", str(state), "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.stdout is not None
    lines = []
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "frugalserve serve exited:\n" + "".join(lines)
            lines.append(line)
            if "Stop: Ctrl-C" in line:
                break
        out = "".join(lines)
        assert "loading weights" in out and "curl " in out and "OpenAI(" in out, out
        yield out.split("frugalserve is serving at ", 1)[1].split()[0]
    finally:
        proc.send_signal(signal.SIGINT)
        rest, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, "".join(lines) + rest
    assert "shutting down" in rest


def usage(state: Path) -> dict[str, dict]:
    out = subprocess.run([sys.executable, "-m", "frugalserve.cli", "usage", "--json",
                          "--state-dir", str(state)], capture_output=True, text=True, check=True)
    return {row["tenant"]: row for row in json.loads(out.stdout)}


def ask(base_url: str) -> int:
    with openai.OpenAI(base_url=base_url, api_key="fs-demo-2f9c41e7", max_retries=0) as c:
        r = c.chat.completions.create(model="assistant", max_tokens=8,
                                      messages=[{"role": "user", "content": "Hello!"}])
        return r.usage.total_tokens


def test_usage_survives_a_restart(tmp_path: Path) -> None:
    port = free_port()
    with frugalserve_serve(tmp_path, port) as url:
        first = ask(url)
    after_first = usage(tmp_path)["default/demo"]
    assert after_first["tokens_prompt"] + after_first["tokens_completion"] == first
    with frugalserve_serve(tmp_path, port) as url:
        second = ask(url)
    after_second = usage(tmp_path)["default/demo"]
    assert after_second["tokens_prompt"] + after_second["tokens_completion"] == first + second
    assert after_second["spent_usd"] > after_first["spent_usd"] > 0
    assert after_second["remaining_usd"] < after_first["remaining_usd"] < 0.05
    assert after_second["state"] == "Active"

"""What a user sees in a job's console: Ray's known-harmless lines left out of the quiet log
(whoever writes them: Ray's C++ core, forwarded worker logs), everything else as it came."""

from __future__ import annotations

import subprocess
import sys

from tests.paths import ROOT

HARMLESS = (
    "[2026-11-30 03:39:42,513 E 23671 23671] core_worker.cc:2465: Actor with class name: "
    "'MapWorker(MapBatches(BatchPredictor))' and ID: '54a0' has constructor arguments in the "
    "object store and max_restarts > 0. If the arguments in the object store go out of scope "
    "or are lost, the actor restart will fail."
)


def _child(verbose: bool) -> subprocess.CompletedProcess:
    code = (
        "import os, sys; from jobs.common import quiet_output; "
        f"quiet_output({verbose}); "
        f"os.write(2, {HARMLESS!r}.encode() + b'\\n'); "  # as the C++ core writes: below Python
        "os.write(2, b'(RayTrainWorker pid=1) generated new fontManager\\n'); "
        "print('[cifar] a line of ours', flush=True); "
        "os.write(2, b'error: and a real one\\n'); "
        "print(os.environ.get('RAY_COLOR_PREFIX'))"
    )
    return subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60
    )


def test_the_quiet_log_leaves_out_ray_s_harmless_lines_only():
    quiet = _child(verbose=False)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr == "error: and a real one\n"
    assert quiet.stdout == "[cifar] a line of ours\n0\n"  # no colour codes in a file or pipe
    loud = _child(verbose=True)
    assert "has constructor arguments" in loud.stderr and "fontManager" in loud.stderr

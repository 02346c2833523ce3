"""Size and start-up time of the built bundle, frozen and from source side by side (README figures).

``python -m scripts.bundle_report [--rounds N]`` after ``make bundle``: prints the bundle's total
size, the largest folders of ``_internal/`` (what dominates the size), and the median of N
rounds, frozen vs ``python -m …`` from this checkout, of: ``luna --help`` (interpreter + CLI
import), ``luna-daemon`` to its READY line (torch import included), ``luna-llm-server`` to
uvicorn's readiness line on the starter model, and ``luna gui --self-test`` to its end (window
offscreen, daemon child started and stopped). Every run gets a fresh LUNA_HOME. Blocking; run it
on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from app.narrates.llm.embedded import default_gguf
from tests.smoke.bundle import REPO_ROOT, bundle_dir, child_env, executable, missing_reason

READY = re.compile(r"LUNA_DAEMON_READY ")
UVICORN_READY = re.compile(r"Uvicorn running on ")


def folder_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def size_report(root: Path, top: int = 14) -> list[str]:
    internal = root / "_internal"
    lines = [f"bundle {root}: {folder_size(root) / 2**20:,.0f} MiB in all"]
    for exe in sorted(p for p in root.iterdir() if p.is_file()):
        lines.append(f"  {exe.name:<34} {exe.stat().st_size / 2**20:8.1f} MiB")
    # Top-level symlinks (PyInstaller links libraries to where their package keeps them) are not counted.
    entries = [
        (folder_size(p) if p.is_dir() else p.stat().st_size, p)
        for p in internal.iterdir()
        if not p.is_symlink()
    ]
    for size, path in sorted(entries, key=lambda item: item[0], reverse=True)[:top]:
        lines.append(f"  _internal/{path.name:<24} {size / 2**20:8.1f} MiB")
    return lines


def time_until(argv: Sequence[str], pattern: re.Pattern[str] | None, env: dict[str, str]) -> float:
    """Seconds from launch to a line matching ``pattern`` (then the process is stopped), or to exit."""
    start = time.perf_counter()
    proc = subprocess.Popen(
        argv, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if pattern is not None and pattern.search(line):
                return time.perf_counter() - start
        if proc.wait() != 0:
            raise RuntimeError(f"{argv[0]} exited with {proc.returncode}")
        if pattern is not None:
            raise RuntimeError(f"{argv[0]} exited without printing {pattern.pattern!r}")
        return time.perf_counter() - start
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        proc.stdout.close()


def measure(command: Sequence[str], pattern: re.Pattern[str] | None, *, from_source: bool) -> float:
    """One timed run in a fresh LUNA_HOME; from source with this checkout on PYTHONPATH."""
    with tempfile.TemporaryDirectory(prefix="luna-bundle-report-") as home:
        env = child_env(Path(home))
        if from_source:
            env["PYTHONPATH"] = str(REPO_ROOT)
        return time_until(command, pattern, env)


def compare(
    rounds: int, frozen: Sequence[str], source: Sequence[str], pattern: re.Pattern[str] | None
) -> tuple[float, float]:
    """Medians (frozen, source); rounds interleaved so a change of load hits both alike."""
    frozen_s, source_s = [], []
    for _ in range(rounds):
        frozen_s.append(measure(frozen, pattern, from_source=False))
        source_s.append(measure(source, pattern, from_source=True))
    return statistics.median(frozen_s), statistics.median(source_s)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    reason = missing_reason()
    if reason:
        print(reason, file=sys.stderr)
        return 1
    print("\n".join(size_report(bundle_dir())))
    python = sys.executable
    model = str(default_gguf())
    llm_args = ["--model", model, "--host", "127.0.0.1", "--port", "0", "--n_ctx", "512"]
    daemon_args = ["--port", "0", "--ws-port", "0", "--device", "cpu"]
    cases = [
        ("luna --help", [str(executable("Luna")), "--help"], [python, "-m", "app", "--help"], None),
        (
            "luna-daemon to READY",
            [str(executable("luna-daemon")), *daemon_args],
            [python, "-m", "daemon", *daemon_args],
            READY,
        ),
        (
            "luna-llm-server to ready",
            [str(executable("luna-llm-server")), *llm_args],
            [python, "-m", "llama_cpp.server", *llm_args],
            UVICORN_READY,
        ),
        (
            "luna gui --self-test (whole run)",
            [str(executable("Luna")), "gui", "--self-test"],
            [python, "-m", "app", "gui", "--self-test"],
            None,
        ),
    ]
    print(f"\nstart-up, median of {args.rounds} (s)       frozen   source   frozen/source")
    for name, frozen, source, pattern in cases:
        frozen_s, source_s = compare(args.rounds, frozen, source, pattern)
        print(f"  {name:<34} {frozen_s:7.2f}  {source_s:7.2f}   {frozen_s / source_s:6.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    sys.exit(main())

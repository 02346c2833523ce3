"""The package boundaries of the brief, enforced by import-linter (contracts in pyproject.toml)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_contracts_hold():
    cli = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(cli), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" not in result.stdout.lower() or "0 broken" in result.stdout.lower()


def test_daemon_never_unpickles():
    offenders = []
    for path in (ROOT / "daemon").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        if "import pickle" in text or "torch.load(" in text or "from pickle" in text:
            offenders.append(str(path))
    assert offenders == []

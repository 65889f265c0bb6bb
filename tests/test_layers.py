"""The layers stay honest (docs/architecture.md): the contracts in pyproject.toml's
``[tool.importlinter]``, checked by import-linter. The sans-IO core (codec, protocol, broker)
imports no I/O, the store never imports the broker, and no room imports a room above it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_import_contracts_are_kept() -> None:
    # in a process of its own: import-linter reconfigures logging
    result = subprocess.run([sys.executable, "-c", "import sys; from importlinter.cli import lint_imports; "
                             "sys.exit(lint_imports(config_filename='pyproject.toml'))"],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr

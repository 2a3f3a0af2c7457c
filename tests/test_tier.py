"""The fast tier's guard (``tests/tier.py``) refuses servers and model runtimes, here and in
the Python processes a test starts."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests import tier
from voxbus.ops.nats import EmbeddedNats, nats_server_binary

pytestmark = pytest.mark.fast


def test_servers_and_model_runtimes_are_refused_and_recorded() -> None:
    guard = tier.Guard()
    before = subprocess.Popen._execute_child, sys.meta_path  # type: ignore[attr-defined]
    undo = tier.install(guard)
    try:
        with pytest.raises(tier.NotInFastTier, match="nats-server"):
            EmbeddedNats().start()  # its temporary store is removed (warnings are errors)
        with pytest.raises(tier.NotInFastTier, match="nats-server"):
            subprocess.Popen([str(nats_server_binary()), "--version"])
        with pytest.raises(tier.NotInFastTier, match="server"):
            subprocess.Popen([str(tier.LIVEKIT_BUILT), "--version"])
        with pytest.raises(tier.NotInFastTier, match="llama_cpp.server"):
            subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--help"])
        with pytest.raises(tier.NotInFastTier, match="llama_cpp"):
            tier.ModelImports(guard).find_spec("llama_cpp.llama", None)
        # other children and imports go on
        out = subprocess.run([sys.executable, "-c", "print('ok')"], capture_output=True,
                             text=True, check=True)
        assert out.stdout == "ok\n"
        assert tier.ModelImports(guard).find_spec("numpy", None) is None
    finally:
        undo()
    assert len(guard.new_refusals()) == 5
    assert guard.new_refusals() == []
    assert (subprocess.Popen._execute_child, sys.meta_path) == before  # type: ignore[attr-defined]


def test_a_child_python_process_is_guarded_too() -> None:
    probe = ("from voxbus.ops.nats import EmbeddedNats\n"
             "try:\n"
             "    import faster_whisper\n"
             "except RuntimeError as e:\n"
             "    print(type(e).__name__)\n"
             "try:\n"
             "    EmbeddedNats().start()\n"
             "except RuntimeError as e:\n"
             "    print(type(e).__name__)\n")
    env = {**os.environ, **tier.child_env()}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True, env=env, timeout=60)
    assert out.stdout.split() == ["NotInFastTier", "NotInFastTier"], out

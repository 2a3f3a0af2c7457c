"""NATS identities and permissions.

- ``operator``: everything, including the purge subject and the JetStream admin API (creating,
  purging and deleting streams). Only operators (people or the purge service) hold it.
- ``stage``: the STT/LLM/TTS workers and the bridge. They publish and consume session subjects of
  the served regions, create and pull their consumers, ack, and use KV (leases, session state);
  they may not publish on ``voxbus.ops.>`` nor call the stream purge/delete/create APIs, so a
  compromised worker can neither purge nor reconfigure retention.
- ``analytics``: read-only consumers of the text streams (transcripts and replies).

``voxbus nats --secure`` writes such a config with passwords kept in its store;
``server_config`` renders it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from voxbus.contracts import streams
from voxbus.contracts.subjects import OPS, PREFIX, check_region, tombstone_subject

ADMIN_DENY = [
    f"{PREFIX}.{OPS}.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.CONSUMER.DELETE.>",
]


@dataclass(frozen=True)
class Credentials:
    operator: str
    stage: str
    analytics: str

    @classmethod
    def generate(cls) -> Credentials:
        return cls(*(secrets.token_urlsafe(18) for _ in range(3)))

    @classmethod
    def load_or_create(cls, path: Path) -> Credentials:
        """The credentials kept at ``path`` (JSON, mode 0600), made there on first use."""
        if path.exists():
            data = json.loads(path.read_text())
            return cls(operator=data["operator"], stage=data["stage"],
                       analytics=data["analytics"])
        creds = cls.generate()
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(dataclasses.asdict(creds), f)
        return creds


def stage_permissions(regions: list[str]) -> dict[str, object]:
    session_subjects = [f"{PREFIX}.{check_region(r)}.*.*.*" for r in regions]
    return {
        "publish": {
            "allow": [
                *session_subjects,
                "$JS.API.INFO",
                "$JS.API.STREAM.INFO.>",
                "$JS.API.CONSUMER.>",
                "$JS.API.DIRECT.GET.>",
                "$JS.API.STREAM.MSG.GET.>",
                "$JS.ACK.>",
                "$JS.FC.>",
                "$KV.>",
            ],
            "deny": ADMIN_DENY,
        },
        "subscribe": {"allow": [*session_subjects, *(tombstone_subject(r) for r in regions),
                                "_INBOX.>"]},
    }


def analytics_permissions(regions: list[str]) -> dict[str, object]:
    text = [streams.text_stream(r) for r in regions]
    return {
        "publish": {
            "allow": [
                "$JS.API.INFO",
                *(f"$JS.API.STREAM.INFO.{s}" for s in text),
                *(f"$JS.API.CONSUMER.*.{s}.>" for s in text),
                *(f"$JS.API.CONSUMER.*.{s}" for s in text),
                *(f"$JS.API.CONSUMER.MSG.NEXT.{s}.>" for s in text),
                *(f"$JS.ACK.{s}.>" for s in text),
            ],
            "deny": ADMIN_DENY,
        },
        "subscribe": {
            "allow": [
                *(f"{PREFIX}.{r}.*.stt.transcript" for r in regions),
                *(f"{PREFIX}.{r}.*.llm.reply" for r in regions),
                "_INBOX.>",
            ]
        },
    }


def server_config(regions: list[str], creds: Credentials) -> str:
    """A nats-server config fragment: ``authorization: {...}`` (a JSON map is valid NATS config
    syntax), to include after other settings."""
    users = [
        {"user": "operator", "password": creds.operator,
         "permissions": {"publish": ">", "subscribe": ">"}},
        {"user": "stage", "password": creds.stage, "permissions": stage_permissions(regions)},
        {"user": "analytics", "password": creds.analytics,
         "permissions": analytics_permissions(regions)},
    ]
    return "authorization: " + json.dumps({"users": users}, indent=2)

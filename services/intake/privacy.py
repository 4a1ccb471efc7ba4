"""Reporters' and parties' personal data: encrypted at rest, hashed with a key for matching.

The key is `settings.intake_key` (a base64 Fernet key, e.g. from a Kubernetes secret) or,
in development, one generated once into `<data_dir>/intake.key` (mode 0600).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet

from .domain import canonical_phone

KEY_FILE = "intake.key"


def load_or_create_key(data_dir: Path) -> bytes:
    """The dev key: created atomically once (two replicas starting together agree on it)."""
    path = Path(data_dir) / KEY_FILE
    if path.exists():
        return path.read_bytes().strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{KEY_FILE}.{os.getpid()}.{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, Fernet.generate_key())
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # fails if another process won the race: then use its key
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    return path.read_bytes().strip()


class Privacy:
    def __init__(self, key: bytes | str) -> None:
        key = key.encode() if isinstance(key, str) else key
        self._fernet = Fernet(key)
        self._match_key = hmac.new(key, b"gridcase-intake-phone-match-v1", hashlib.sha256).digest()

    @classmethod
    def from_settings(cls, settings: Any) -> Privacy:
        return cls(settings.intake_key or load_or_create_key(settings.data_dir))

    def seal(self, value: Any) -> str:
        """Any JSON-able value → one Fernet token (text)."""
        return self._fernet.encrypt(json.dumps(value, ensure_ascii=False).encode()).decode()

    def open(self, token: str) -> Any:
        return json.loads(self._fernet.decrypt(token.encode()))

    def seal_bytes(self, raw: bytes) -> bytes:
        return self._fernet.encrypt(raw)

    def open_bytes(self, token: bytes) -> bytes:
        return self._fernet.decrypt(token)

    def match_hash(self, phone: str) -> str:
        """Keyed hash of the canonical phone: equal phones match, the hash reveals nothing."""
        return hmac.digest(self._match_key, canonical_phone(phone).encode(), "sha256").hex()  # one-shot: fast

"""Secrets in a package's members: refused file names, our token patterns, and detect-secrets.

Every member is scanned before a package is written; a hit is reported as ``member:line: kind``.
detect-secrets (pinned) brings its detectors for AWS, private keys, GitHub, GitLab, JWTs,
Slack, Stripe, OpenAI, PyPI and more, minus its two high-entropy detectors: evidence is full
of sha256 digests and base64 PNGs, which they flag wholesale. It has no Hugging Face, Kaggle,
W&B or Ray detector; ``PATTERNS`` adds those.
"""

from __future__ import annotations

import fnmatch
import re
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

# File names that are credentials whatever they hold (matched against the base name, lower-cased).
REFUSED_NAMES = (
    ("kaggle.json", "Kaggle API credentials file"),
    (".env*", "environment file"),
    ("*.pem", "PEM key or certificate"),
    ("id_rsa*", "SSH private key"),
    ("id_dsa*", "SSH private key"),
    ("id_ecdsa*", "SSH private key"),
    ("id_ed25519*", "SSH private key"),
    (".netrc", "netrc credentials"),
    ("_netrc", "netrc credentials"),
    (".git-credentials", "git credentials"),
    (".pypirc", "PyPI credentials"),
    ("auth_token", "Ray session token file"),
)
# Paths (the last two parts) that are credentials: ~/.aws/credentials, ~/.ray/auth_token.
REFUSED_PATHS = ((".aws/credentials", "AWS credentials file"), (".ray/*", "Ray session file"))

_VALUE = r"\s*[=:]\s*['\"]?"
PATTERNS = tuple(
    (kind, re.compile(rx.encode()))
    for kind, rx in (
        ("Hugging Face token", r"\bhf_[A-Za-z0-9]{30,}"),
        (
            "Hugging Face token",
            r"(?i)\b(?:HF_TOKEN|HUGGING_FACE_HUB_TOKEN|HUGGINGFACEHUB_API_TOKEN)"
            + _VALUE
            + r"[A-Za-z0-9_]{8,}",
        ),
        ("Kaggle API key", r"(?i)\bKAGGLE_KEY" + _VALUE + r"[A-Za-z0-9]{8,}"),
        ("Kaggle API token", r"(?i)\bKAGGLE_API_TOKEN" + _VALUE + r"[A-Za-z0-9_\-]{8,}"),
        ("Kaggle credentials (kaggle.json)", r"\"key\"\s*:\s*\"[0-9a-f]{32}\""),
        ("AWS access key id", r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
        ("AWS secret access key", r"(?i)\baws_secret_access_key" + _VALUE + r"[A-Za-z0-9/+=]{40}"),
        ("GitHub token", r"\bgh[pousr]_[A-Za-z0-9]{36,}"),
        ("GitHub token", r"\bgithub_pat_[A-Za-z0-9_]{22,}"),
        ("W&B API key", r"(?i)\bWANDB_API_KEY" + _VALUE + r"[A-Za-z0-9_\-]{20,}"),
        ("Ray auth token", r"(?i)\bRAY_AUTH_TOKEN" + _VALUE + r"[A-Za-z0-9_\-]{8,}"),
        ("private key", r"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----"),
    )
)
# detect-secrets detectors left out: they flag every sha256 digest and base64 PNG in the evidence.
SKIPPED_DETECTORS = ("Base64HighEntropyString", "HexHighEntropyString")


@dataclass(frozen=True)
class Hit:
    member: str
    line: int  # 1-based; 0 for a refused file name
    kind: str

    def __str__(self) -> str:
        return f"{self.member}:{self.line}: {self.kind}" if self.line else f"{self.member}: {self.kind}"


def refused_name(member: str) -> str | None:
    """Why a member's file name alone is a secret (None if it is not)."""
    path = PurePosixPath(member.lower())
    for pattern, kind in REFUSED_NAMES:
        if fnmatch.fnmatchcase(path.name, pattern):
            return f"{kind} (file name {path.name})"
    tail = "/".join(path.parts[-2:])
    for pattern, kind in REFUSED_PATHS:
        if fnmatch.fnmatchcase(tail, pattern):
            return f"{kind} (path {tail})"
    return None


def pattern_hits(member: str, data: bytes) -> list[Hit]:
    """Our patterns over a member's bytes (text or binary), each hit with its line number."""
    hits = []
    for kind, rx in PATTERNS:
        for m in rx.finditer(data):
            hits.append(Hit(member, data.count(b"\n", 0, m.start()) + 1, kind))
    return hits


def detect_secrets_hits(texts: dict[str, bytes]) -> list[Hit]:
    """detect-secrets over the text members: each is written to a scratch dir under its own name, then scanned."""
    from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
    from detect_secrets.core.scan import scan_file
    from detect_secrets.settings import transient_settings

    detectors: dict[str, Any] = get_mapping_from_secret_type_to_class()
    plugins = [{"name": cls.__name__} for cls in detectors.values() if cls.__name__ not in SKIPPED_DETECTORS]
    hits = []
    with (
        tempfile.TemporaryDirectory(prefix="showwork-scan-") as tmp,
        transient_settings({"plugins_used": plugins}),
    ):
        for member, data in texts.items():
            path = Path(tmp) / member
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            hits += [Hit(member, s.line_number, s.type) for s in scan_file(str(path))]
    return hits


def is_text(data: bytes) -> bool:
    if b"\0" in data[:8192]:
        return False
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def scan(members: Iterable[tuple[str, bytes]]) -> list[Hit]:
    """Every secret in ``members`` (name, bytes): refused names, our patterns, detect-secrets on text.

    Sorted by member and line; one hit per line, naming every kind found on it.
    """
    hits: list[Hit] = []
    texts = {}
    for name, data in members:
        why = refused_name(name)
        if why:
            hits.append(Hit(name, 0, why))
        hits += pattern_hits(name, data)
        if is_text(data):
            texts[name] = data
    hits += detect_secrets_hits(texts)
    kinds: dict[tuple[str, int], list[str]] = {}
    for h in sorted(set(hits), key=lambda h: (h.member, h.line, h.kind.lower())):
        kinds.setdefault((h.member, h.line), []).append(h.kind)
    return [Hit(member, line, " / ".join(k)) for (member, line), k in kinds.items()]

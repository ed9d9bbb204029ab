"""A scan for credentials before anything is published: names and contents that must not ship.

The token shapes follow detect-secrets (Yelp, Apache-2.0) and the vendors' published formats;
see docs/publishing.md for why this is a pattern set rather than that library.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

# Matched against the lower-cased file name.
SECRET_NAMES = (".env", ".env.*", "*.pem", "*.key", "id_rsa", "id_dsa", "id_ecdsa", "id_ed25519",
                "credentials", ".netrc", "_netrc", ".pypirc", ".git-credentials", "*.p12",
                "*.pfx", "*.jks", "*.keystore")
# Templates that document which variables to set; their contents are still scanned.
TEMPLATE_NAMES = (".env.example", ".env.sample", ".env.template", ".env.dist")
_VALUE_END = rb"(?![A-Za-z0-9/+=])"
SECRET_PATTERNS = (
    # Any spelling of the setting (AWS_SECRET_ACCESS_KEY, aws_secret_access_key,
    # SecretAccessKey, secret-access-key), quoted or not, then = : := or =>, then 40 characters.
    ("an AWS secret access key", re.compile(
        rb"(?i)secret[_\-. ]?access[_\-. ]?key['\"]?\s*(?::=|=>|=|:)\s*['\"]?"
        rb"[A-Za-z0-9/+=]{40}" + _VALUE_END)),
    # A 40-character string quoted near "aws" and "secret" (e.g. a dict of AWS settings).
    ("an AWS secret access key", re.compile(
        rb"(?i)aws.{0,20}?secret.{0,20}?['\"][A-Za-z0-9/+]{40}['\"]")),
    ("an AWS access key id", re.compile(rb"\b(?:AKIA|ASIA|ABIA|ACCA|A3T[A-Z0-9])[A-Z0-9]{16}\b")),
    ("a GitHub token", re.compile(
        rb"\b(?:gh[pousr]_[A-Za-z0-9]{36}|github_pat_[A-Za-z0-9]{22}_[A-Za-z0-9]{59})\b")),
    ("a GitLab token", re.compile(
        rb"\b(?:gl(?:pat|dt|ft|soat|rt|cbt|imt|ptt|oas|agent)-|GR1348941)[A-Za-z0-9_\-]{20,}")),
    ("a Slack token", re.compile(
        rb"\bxox[abposr]-(?:[0-9]+-)+[A-Za-z0-9]+|hooks\.slack\.com/services/T[A-Za-z0-9_]+"
        rb"/B[A-Za-z0-9_]+/[A-Za-z0-9_]+")),
    ("a Google API key", re.compile(rb"\bAIza[0-9A-Za-z_\-]{35}(?![0-9A-Za-z_\-])")),
    ("a Google OAuth client secret", re.compile(rb"\bGOCSPX-[A-Za-z0-9_\-]{28}")),
    ("a PyPI token", re.compile(rb"\bpypi-AgE[A-Za-z0-9_\-]{50,}")),
    ("a private key", re.compile(rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----")),
)
# Larger files are data (crops, photos, models), not configuration.
TEXT_LIMIT = 5 << 20
DATA_SUFFIXES = {".jpg", ".jpeg", ".png", ".keras"}


class SecretFound(RuntimeError):
    """Files that look like credentials were about to be published."""


def secret_name(name: str) -> bool:
    """True when a file of this name holds credentials by convention."""
    lowered = name.lower()
    return lowered not in TEMPLATE_NAMES and any(
        fnmatch.fnmatchcase(lowered, pattern) for pattern in SECRET_NAMES)


def scan_text(data: bytes) -> list[tuple[int, str]]:
    """Each (line number, what) in data that looks like a credential; never the secret."""
    found = []
    for what, pattern in SECRET_PATTERNS:
        for match in pattern.finditer(data):
            found.append((data.count(b"\n", 0, match.start()) + 1, what))
    return sorted(set(found))


def find_secrets(root: Path) -> list[str]:
    """Every file under root that looks like a credential, with the reason."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if secret_name(path.name) or path.parent.name == ".aws":
            found.append(f"{rel}: a credentials file by its name")
            continue
        if path.stat().st_size > TEXT_LIMIT or path.suffix.lower() in DATA_SUFFIXES:
            continue
        found += [f"{rel}: contains {what} (line {line})"
                  for line, what in scan_text(path.read_bytes())]
    return found


def refuse_secrets(root: Path) -> None:
    """Raise SecretFound naming every suspicious file under root."""
    found = find_secrets(root)
    if found:
        raise SecretFound("refusing to publish; remove these or keep them out of the project:\n"
                          + "\n".join(f"  {line}" for line in found))

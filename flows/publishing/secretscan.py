"""A scan for credentials before anything is published: names and contents that must not ship."""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path

SECRET_NAMES = (".env", ".env.*", "*.pem", "*.key", "id_rsa*", "id_ed25519*", "id_ecdsa*",
                "credentials", ".netrc", ".pypirc", "*.p12", "*.pfx")
SECRET_PATTERNS = {
    "an AWS access key id": re.compile(rb"\b(AKIA|ASIA)[0-9A-Z]{16}\b"),
    "an AWS secret key setting": re.compile(
        rb"aws_secret_access_key\s*[=:]\s*['\"]?[A-Za-z0-9/+=]{40}"),
    "a private key": re.compile(rb"-----BEGIN (RSA |EC |OPENSSH |DSA |ENCRYPTED )?PRIVATE KEY"),
}
TEXT_LIMIT = 5 << 20  # larger files (images, models) are data, not configuration


class SecretFound(RuntimeError):
    """Files that look like credentials were about to be published."""


def find_secrets(root: Path) -> list[str]:
    """Every file under root that looks like a credential, with the reason."""
    found = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if any(fnmatch.fnmatch(path.name, pattern) for pattern in SECRET_NAMES) or (
                path.parent.name == ".aws"):
            found.append(f"{rel}: a credentials file by its name")
            continue
        if path.stat().st_size > TEXT_LIMIT or path.suffix in {".jpg", ".png", ".keras"}:
            continue
        data = path.read_bytes()
        found += [f"{rel}: contains {what}" for what, pattern in SECRET_PATTERNS.items()
                  if pattern.search(data)]
    return found


def refuse_secrets(root: Path) -> None:
    """Raise SecretFound naming every suspicious file under root."""
    found = find_secrets(root)
    if found:
        raise SecretFound("refusing to publish; remove these or keep them out of the project:\n"
                          + "\n".join(f"  {line}" for line in found))

"""Who may do what over HTTP: API tokens and their scopes. Pure; ``kiln.web.auth`` enforces it.

Scopes nest: ``admin`` includes ``write``, which includes ``read``. Tokens are configured by
their sha256 (``kiln token hash``), several at once, so one can be added, rolled out and the
old one removed without downtime; ``KILN_API_TOKEN`` stays a plaintext token with every scope.
With no token configured at all, nothing is checked (the embedded default, one machine).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass, field

READ, WRITE, ADMIN = "read", "write", "admin"
IMPLIED = {
    READ: frozenset({READ}),
    WRITE: frozenset({READ, WRITE}),
    ADMIN: frozenset({READ, WRITE, ADMIN}),
}
_HEX = re.compile(r"^[0-9a-f]{64}$")


def hash_token(token: str) -> str:
    """The sha256 (lowercase hex) that ``KILN_API_TOKENS`` names a token by."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_tokens(spec: str) -> dict[str, frozenset[str]]:
    """``"<sha256>:read,write;<sha256>:admin"`` -> ``{sha256: scopes (implied included)}``;
    ValueError names the entry that is wrong."""
    tokens: dict[str, frozenset[str]] = {}
    for entry in (e.strip() for e in spec.split(";")):
        if not entry:
            continue
        digest, _, names = entry.partition(":")
        digest = digest.strip().lower()
        if not _HEX.match(digest):
            raise ValueError(
                f"KILN_API_TOKENS: {digest[:12]!r}... is not a sha256 in hex "
                "(make one with `kiln token hash`)"
            )
        scopes: set[str] = set()
        for name in (n.strip() for n in names.split(",") if n.strip()):
            if name not in IMPLIED:
                raise ValueError(f"KILN_API_TOKENS: unknown scope {name!r} (read, write or admin)")
            scopes |= IMPLIED[name]
        if not scopes:
            raise ValueError(f"KILN_API_TOKENS: token {digest[:12]}... has no scope")
        tokens[digest] = frozenset(scopes) | tokens.get(digest, frozenset())
    return tokens


@dataclass(frozen=True)
class AccessPolicy:
    tokens: dict[str, frozenset[str]] = field(default_factory=dict)  # sha256 -> scopes
    metrics_token_hash: str = ""

    @classmethod
    def from_config(
        cls, *, api_token: str = "", api_tokens: str = "", metrics_token: str = ""
    ) -> AccessPolicy:
        tokens = parse_tokens(api_tokens)
        if api_token:
            tokens[hash_token(api_token)] = IMPLIED[ADMIN]
        return cls(tokens, hash_token(metrics_token) if metrics_token else "")

    @property
    def enabled(self) -> bool:
        """Are API tokens configured (and so every non-open endpoint checked)?"""
        return bool(self.tokens)

    def scopes_of(self, token: str) -> frozenset[str] | None:
        """The token's scopes, or None for an unknown token. Looked up by its sha256: the
        digest of a guess says nothing about how close the guess was."""
        return self.tokens.get(hash_token(token)) if token else None

    def opens_metrics(self, token: str) -> bool:
        """May ``token`` read /metrics: the metrics token, or any token with ``read``."""
        if (
            self.metrics_token_hash
            and token
            and hmac.compare_digest(hash_token(token), self.metrics_token_hash)
        ):
            return True
        return READ in (self.scopes_of(token) or ())

    @property
    def metrics_closed(self) -> bool:
        return self.enabled or bool(self.metrics_token_hash)

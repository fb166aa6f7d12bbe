"""PII scrubbing: e-mail addresses and IP addresses (v4 and v6) replaced by placeholders, and counted.

The patterns follow datatrove's PIIFormatter (itself from BigScience), but every match is replaced by one fixed
placeholder rather than a random fake address, so the output is deterministic and the count is exact. Candidate
IPs are validated with the `ipaddress` module (so 999.1.1.1 and version strings such as 1.2.3 are left alone).
"""

from __future__ import annotations

import ipaddress
import re
from collections import Counter

from plinth.config import PiiConfig

__all__ = ["EMAIL_RE", "IPV4_RE", "IPV6_RE", "PiiScrubber", "scrub_text"]

EMAIL_RE = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+"
                      r"[A-Za-z]{2,24}(?![\w-])")
# (?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d), written to start with its first digit and check the character
# before it afterwards (`(?<![\w.]\d)`): the same matches, but the regex engine then skips to digits instead of
# trying a lookbehind at every character (3x faster on prose).
IPV4_RE = re.compile(r"\d(?<![\w.]\d)\d{0,2}\.(?:\d{1,3}\.){2}\d{1,3}(?![\w]|\.\d)")
IPV6_RE = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?![\w:])")  # candidates; validated


def _valid_ip(s: str) -> bool:
    try:
        ipaddress.ip_address(s)
    except ValueError:
        return False
    return True


def scrub_text(text: str, cfg: PiiConfig) -> tuple[str, Counter]:
    """(scrubbed text, Counter of replacements by kind 'email' / 'ip')."""
    counts: Counter = Counter()
    if cfg.emails and "@" in text:
        text, n = EMAIL_RE.subn(cfg.email_placeholder, text)
        if n:
            counts["email"] += n
    if cfg.ips:
        def repl(m: re.Match) -> str:
            if _valid_ip(m.group(0)):
                counts["ip"] += 1
                return cfg.ip_placeholder
            return m.group(0)

        if "." in text:
            text = IPV4_RE.sub(repl, text)
        if "::" in text or text.count(":") >= 3:
            text = IPV6_RE.sub(repl, text)
    return text, counts


class PiiScrubber:
    """Scrub documents in place and count, per source, replacements and documents touched."""

    def __init__(self, cfg: PiiConfig):
        self.cfg = cfg
        self.stats: dict[str, Counter] = {}

    def apply(self, doc: dict) -> dict:
        """The same document with its text scrubbed (no-op when disabled)."""
        if not self.cfg.enabled:
            return doc
        text, counts = scrub_text(doc["text"], self.cfg)
        st = self.stats.setdefault(doc.get("source", ""), Counter())
        st["docs_in"] += 1
        if counts:
            doc["text"] = text
            st["docs_changed"] += 1
            st.update(counts)
        return doc

    def to_dict(self) -> dict:
        return {src: {k: c.get(k, 0) for k in ("docs_in", "docs_changed", "email", "ip")}
                for src, c in sorted(self.stats.items())}

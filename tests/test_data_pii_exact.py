"""The IPv4 pattern, rewritten for speed, finds exactly what its plain form finds."""

from __future__ import annotations

import random
import re

from plinth.data.pii import IPV4_RE

PLAIN_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w]|\.\d)")


def test_ipv4_pattern_matches_its_plain_form():
    r = random.Random(0)
    texts = ["10.0.0.1", "a10.0.0.1", ".10.0.0.1", "x 1.2.3.4.5 y", "v1.2.3.4", "1.2.3.4a",
             "1234.1.1.1 and 255.255.255.0", "Served from 192.168.1.20, then 8.8.8.8.", "_1.2.3.4",
             "é1.2.3.4", "١.٢.٣.٤ 1.2.3.4"]
    for _ in range(3000):
        texts.append("".join(r.choice("0123456789.....  aé_-:١") for _ in range(r.randint(0, 40))))
    for t in texts:
        assert [m.span() for m in IPV4_RE.finditer(t)] == [m.span() for m in PLAIN_IPV4.finditer(t)], t

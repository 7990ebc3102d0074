"""The SendCloud client's own form encoding must be byte for byte what ``urlencode`` writes:
the simulator and SendCloud decode it with the standard rules, so any difference would change
a recipient's variables or an HTML part."""

from __future__ import annotations

import json
import random
import urllib.parse

from plugin.providers.sendcloud import form_body

EDGES = [
    "",
    " ",
    "%",
    "%20",
    "+",
    "a b+c%d&e=f",
    "~_.-",
    "名字 张三",
    "😀 emoji",
    "\x00\x1f\x7f\x80\xff",
    "\u2028line",
    "https://crm.example.com/m/u/1.2.AbC-_d?x=1&y=%2F#frag",
]


def test_edge_values_encode_as_urlencode_does():
    for value in EDGES:
        fields = {"k": value, "html": value, "名": value}
        assert form_body(fields).decode("ascii") == urllib.parse.urlencode(fields)


def test_random_values_encode_as_urlencode_does():
    rng = random.Random(20261206)
    alphabet = [chr(i) for i in range(300)] + list("中文😀%+ &=~")
    for _ in range(3000):
        value = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 60)))
        fields = {"xsmtpapi": value, "subject": value}
        assert form_body(fields).decode("ascii") == urllib.parse.urlencode(fields), repr(value)


def test_a_batchs_variables_survive_the_round_trip():
    sub = {"%name%": ["张三", "O'Brien & Co", "50% off + more"], "%url%": ["https://x.test/a?b=c&d=e"] * 3}
    body = form_body({"xsmtpapi": json.dumps({"sub": sub}, ensure_ascii=False, separators=(",", ":"))})
    decoded = urllib.parse.parse_qs(body.decode("ascii"))
    assert json.loads(decoded["xsmtpapi"][0]) == {"sub": sub}

"""tracking: one salt per purpose, link rewriting, RFC 8058 header values, machine heuristics,
the mailto unsubscribe subject."""

from __future__ import annotations

import datetime as dt

import pytest

from plugin import tracking
from plugin.campaigns import rendering
from plugin.errors import InvalidInput
from plugin.models import Template

NOW = dt.datetime(2026, 3, 1, 12, 0, tzinfo=dt.UTC)


def test_tokens_carry_ids_and_work_only_for_their_purpose(settings_like):
    s = settings_like
    opened = tracking.open_token(s, 3, 44)
    clicked = tracking.click_token(s, 3, 44)
    unsub = tracking.unsubscribe_token(s, 3, 44)
    assert len({opened, clicked, unsub}) == 3
    assert tracking.read_open(s, opened) == (3, 44)
    assert tracking.read_click(s, clicked) == (3, 44)
    assert tracking.read_unsubscribe(s, unsub) == (3, 44)
    for reader, token in (
        (tracking.read_open, clicked),
        (tracking.read_click, unsub),
        (tracking.read_unsubscribe, opened),
    ):
        with pytest.raises(InvalidInput):
            reader(s, token)
    assert tracking.unsubscribe_url(s, 3, 44) == f"https://m.example.com/m/u/{unsub}"


@pytest.fixture
def settings_like():
    import dataclasses

    from plugin.config import load_settings

    return dataclasses.replace(
        load_settings({"SECRET_KEY": "k"}), public_base_url="https://m.example.com", public_url_prefix="/m"
    )


def test_rewrite_links_keeps_placeholders_code_and_mailto_and_adds_one_pixel():
    template = Template(
        subject="Hi",
        html=(
            "<html><head><style>a{color:red}</style></head><body>"
            "<a href='https://a.example/x?y=1&amp;z=2'>A</a> <a href=\"{unsubscribe}\">U</a>"
            '<a href="https://a.example/{email}">per person</a> <a href="mailto:s@x.org">M</a>'
            "<script>var u='<a href=\"https://in.script/\">';</script></body></html>"
        ),
    )
    content = rendering.compile_content(
        template, sender=None, company_name="", postal_address="", tracking=True
    )
    urls = rendering.tracked_urls(content)
    assert urls == ["https://a.example/x?y=1&z=2"]
    out = rendering.rewrite_links(
        content,
        {urls[0]: 7},
        click_url=lambda i: f"https://t/m/c/{i}/%mkt_click%",
        open_url="https://t/o/%mkt_open%.gif",
    )
    assert 'href="https://t/m/c/7/%mkt_click%"' in out.html  # the CSS inliner re-quotes attributes
    assert 'href="%unsubscribe_url%"' in out.html
    assert "mailto:s@x.org" in out.html
    assert "https://in.script/" in out.html
    assert out.html.count('<img src="https://t/o/%mkt_open%.gif"') == 1
    assert out.html.index("%mkt_open%") < out.html.index("</body>")
    assert out.size_bytes == len(out.html.encode())
    assert out.text == content.text


def test_list_unsubscribe_headers(settings_like):
    h = tracking.list_unsubscribe_headers(settings_like, "reply@example.com", "mkt_unsub")
    assert h == {
        "List-Unsubscribe": "<https://m.example.com/m/u/%mkt_unsub%>, "
        "<mailto:reply@example.com?subject=unsubscribe-%mkt_unsub%>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    odd = tracking.list_unsubscribe_headers(settings_like, "Sales <s@x.org>", "mkt_unsub")
    assert odd["List-Unsubscribe"] == "<https://m.example.com/m/u/%mkt_unsub%>"  # no unsafe mailto


def test_an_unsubscribe_mail_subject_names_its_recipient(settings_like):
    token = tracking.unsubscribe_token(settings_like, 2, 9)
    assert tracking.unsubscribe_from_subject(settings_like, f"Re: {tracking.mailto_subject(token)}") == (2, 9)
    assert tracking.unsubscribe_from_subject(settings_like, "unsubscribe-" + token[:-1] + "A") is None
    assert tracking.unsubscribe_from_subject(settings_like, "Re: your offer") is None


@pytest.mark.parametrize(
    ("method", "agent", "machine"),
    [
        ("GET", "Mozilla/5.0 (Macintosh) AppleWebKit/605.1.15 Mail", False),
        ("HEAD", "Mozilla/5.0", True),
        ("GET", "", True),
        ("GET", None, True),
        ("GET", "Mozilla/5.0 (via ggpht.com GoogleImageProxy)", True),
        ("GET", "YahooMailProxy; https://help.yahoo.com", True),
        ("GET", "python-requests/2.32", True),
        ("GET", "Mozilla/5.0 (compatible; Barracuda Sentinel)", True),
    ],
)
def test_machine_agents(method, agent, machine):
    assert tracking.is_machine_agent(method, agent) is machine


def test_timing_heuristics():
    sent = NOW - dt.timedelta(seconds=2)
    assert tracking.is_machine_open(sent_at=sent, at=NOW)
    assert not tracking.is_machine_open(sent_at=NOW - dt.timedelta(minutes=3), at=NOW)
    assert not tracking.is_machine_open(sent_at=None, at=NOW)
    assert tracking.is_machine_click(sent_at=sent, at=NOW, other_link_clicks_within_burst=0)
    assert tracking.is_machine_click(sent_at=None, at=NOW, other_link_clicks_within_burst=1)
    assert not tracking.is_machine_click(
        sent_at=NOW - dt.timedelta(hours=1), at=NOW, other_link_clicks_within_burst=0
    )


def test_compact_tokens_are_short_purpose_bound_and_older_tokens_still_work(app):
    from plugin import tracking
    from plugin.errors import InvalidInput
    from plugin.extension import get_state

    settings = get_state().settings
    token = tracking.unsubscribe_token(settings, 3, 987654)
    assert len(token) <= 40
    assert tracking.read_unsubscribe(settings, token) == (3, 987654)
    with pytest.raises(InvalidInput):
        tracking.read_open(settings, token)  # another purpose
    with pytest.raises(InvalidInput):
        tracking.read_unsubscribe(settings, token.replace("987654", "987655"))  # another recipient
    with pytest.raises(InvalidInput):
        tracking.read_unsubscribe(settings, "03" + token[1:])  # a leading zero is another spelling
    older = tracking.make_token(settings.token_secret, "unsubscribe", {"w": 3, "r": 42})
    assert tracking.read_unsubscribe(settings, older) == (3, 42)  # links in mail already sent


def test_a_recipients_three_tags_are_slices_of_one_mac_and_earlier_tags_still_work(app):
    """One HMAC-SHA512 per recipient gives its unsubscribe, open and click tags; none of them
    opens another purpose, and tags signed the earlier way (HMAC-SHA256 per purpose, in mail
    sent before) are still accepted."""
    import base64
    import hashlib
    import hmac

    from plugin import tracking
    from plugin.errors import InvalidInput
    from plugin.extension import get_state

    settings = get_state().settings
    secret = settings.token_secret
    unsubscribe, opened, clicked = tracking.link_token_maker(settings, 5)(1234)
    digest = hmac.new(tracking._links_key(secret), b"5.1234", hashlib.sha512).digest()
    tags = [base64.urlsafe_b64encode(digest[i : i + 12]).decode() for i in (0, 12, 24)]
    assert [t.rsplit(".", 1)[1] for t in (unsubscribe, opened, clicked)] == tags
    assert len(set(tags)) == 3
    for token, purpose in ((unsubscribe, "unsubscribe"), (opened, "open"), (clicked, "click")):
        assert tracking.read_id_token(secret, purpose, token) == (5, 1234)
        for other in {"unsubscribe", "open", "click"} - {purpose}:
            with pytest.raises(InvalidInput):
                tracking.read_id_token(secret, other, token)
    earlier = f"5.1234.{tracking._mac(secret, 'unsubscribe', 5, 1234)}"
    assert earlier != unsubscribe
    assert tracking.read_unsubscribe(settings, earlier) == (5, 1234)
    with pytest.raises(InvalidInput):
        tracking.read_open(settings, earlier)


def test_the_runners_token_makers_sign_exactly_as_the_single_token_functions(app):
    from plugin import tracking
    from plugin.extension import get_state

    settings = get_state().settings
    singles = {
        "unsubscribe": tracking.unsubscribe_token,
        "open": tracking.open_token,
        "click": tracking.click_token,
    }
    for purpose, single in singles.items():
        for workspace_id in (1, 7, 123456):
            make = tracking.link_token_maker(settings, workspace_id)
            index = tracking.LINK_PURPOSES.index(purpose)
            for recipient_id in (0, 1, 42, 987654, 10**15):
                token = make(recipient_id)[index]
                assert token == single(settings, workspace_id, recipient_id)
                assert tracking.read_id_token(settings.token_secret, purpose, token) == (
                    workspace_id,
                    recipient_id,
                )

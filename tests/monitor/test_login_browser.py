"""People log in on the monitor's own page (not Django admin's), in headless Chromium; reads stay
open.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from swf_testbed.monitor.api.accounts import set_login

from .browserlib import needs_chromium

pytestmark = [pytest.mark.django_db(transaction=True), needs_chromium]

PASSWORD = "streaming-testbed-42"
POST_NAMESPACE = """async (name) => {
  const csrf = (document.cookie.match(/csrftoken=([^;]+)/) || [])[1] || "";
  const r = await fetch("/api/namespaces/ensure/", {method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-CSRFToken": csrf},
    body: JSON.stringify({name})});
  return r.status;
}"""


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context()
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


@pytest.mark.slow
def test_log_in_on_the_monitors_page_write_then_log_out(live_server: Any, page: Any) -> None:
    set_login("alice", PASSWORD)
    page.goto(live_server.url + "/messages/")
    assert page.evaluate(POST_NAMESPACE, "before-login") in (401, 403)  # reads open, writes not
    page.get_by_role("link", name="log in").click()
    page.wait_for_url("**/login/?next=/messages/")
    assert page.title() == "Log in · swf-testbed"
    assert page.locator("header a.brand", has_text="swf-testbed monitor").count() == 1  # our layout
    assert "Django administration" not in page.content()

    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("not-the-password")
    page.get_by_role("button", name="Log in").click()
    page.locator("#login-error").wait_for()
    assert "do not match" in page.locator("#login-error").inner_text()

    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(live_server.url + "/messages/")
    assert page.locator("#logged-in-as").inner_text() == "alice"
    assert page.locator("header a", has_text="admin").count() == 0  # not staff
    assert page.evaluate(POST_NAMESPACE, "after-login") in (200, 201)

    page.get_by_role("button", name="log out").click()
    page.get_by_role("link", name="log in").wait_for()
    assert page.evaluate(POST_NAMESPACE, "after-logout") in (401, 403)


@pytest.mark.slow
def test_a_staff_login_also_gets_the_admin_link(live_server: Any, page: Any) -> None:
    set_login("bob", PASSWORD, staff=True)
    page.goto(live_server.url + "/login/")
    page.get_by_label("User name").fill("bob")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(live_server.url + "/")  # no ?next=: the dashboard
    assert page.locator("#logged-in-as").inner_text() == "bob"
    page.get_by_role("link", name="admin").click()
    page.get_by_text("Django administration").first.wait_for()  # the admin takes the same session

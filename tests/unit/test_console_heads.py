"""The console's classifier heads page (docs/console.md), by real clicks in headless
Chromium against a gateway with a fake encoder: a head file uploaded under a name and an
owner, a second version activated after a confirmation (Cancel changes nothing), rolled
back and deleted; the API's error messages shown as they are; a tenant admin key seeing
its tenant's and the global heads, never another tenant's. (Beside test_console.py,
which holds the other pages.)"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from adaptserve.bench.fake_engine import EMBED_DIM
from tests.helpers import ADMIN_KEY, Browser, RunningGateway, console_sign_in, random_head, tenant_admin_key

LABELS = ["negative", "positive"]


def _head(seed: int, **changes: Any) -> dict[str, Any]:
    return random_head(LABELS, seed, **changes)


def _described(embed_gateway: RunningGateway, name: str, tenant: str) -> dict[str, Any]:
    response = embed_gateway.admin("GET", f"/heads/{name}", params={"tenant": tenant})
    assert response.status_code == 200, response.text
    return dict(response.json())


def _upload(browser: Browser, name: str, owner: str, file: Path) -> None:
    browser.type("#head-name", name)
    browser.click(f"#head-owner option[value='{owner}']")
    browser.type("#head-file", str(file), clear=False)
    browser.click("#head-upload button[type=submit]")


def _reopen(browser: Browser) -> None:
    """Leave the page and come back: it lists the heads afresh."""
    browser.click("#nav-tenants")
    browser.find("#page-tenants")
    browser.click("#nav-heads")


def test_admin_uploads_activates_rolls_back_and_deletes_a_head(
    embed_gateway: RunningGateway, browser: Browser, tmp_path: Path
) -> None:
    file = tmp_path / "mood.json"
    file.write_text(json.dumps(_head(seed=1)))
    console_sign_in(browser, embed_gateway.url, ADMIN_KEY, admin=True)
    browser.click("#nav-heads")
    _upload(browser, "mood", "default", file)
    browser.wait_text("#head-status", "Uploaded mood")
    first = _described(embed_gateway, "mood", "default")
    assert first["owner"] == "default" and [v["version"] for v in first["versions"]] == [first["active_version"]]
    card = "[data-head=mood][data-owner=default]"
    summary = browser.text(f"{card} .head-summary")
    assert first["active_version"] in summary and "negative, positive" in summary
    assert f"embedding model embedder, dimension {EMBED_DIM}" in summary
    assert browser.text(f"{card} .head-owner") == "tenant default"

    pushed = embed_gateway.admin(
        "PUT", "/heads/mood", json=_head(seed=2), params={"tenant": "default", "activate": "false"}
    )
    assert pushed.status_code == 201, pushed.text
    v1, v2 = first["active_version"], pushed.json()["version"]
    _reopen(browser)
    browser.click(f"{card} [data-activate='{v2}']")
    assert "Activate version" in browser.text("#confirm")
    browser.click("#confirm-no")
    assert _described(embed_gateway, "mood", "default")["active_version"] == v1  # nothing without a yes
    browser.click(f"{card} [data-activate='{v2}']")
    browser.click("#confirm-yes")
    browser.wait_text("#head-status", f"{v1} → {v2}")
    assert _described(embed_gateway, "mood", "default")["active_version"] == v2
    assert browser.text(f"{card} .head-active") == v2
    assert browser.find_all(f"{card} [data-activate='{v1}']")  # the old one: activatable again

    browser.click(f"{card} [data-rollback]")
    browser.click("#confirm-yes")
    browser.wait_text("#head-status", "rolled back")
    assert _described(embed_gateway, "mood", "default")["active_version"] == v1
    assert browser.text(f"{card} .head-active") == v1

    browser.click(f"{card} [data-delete]")
    browser.click("#confirm-no")
    assert embed_gateway.admin("GET", "/heads/mood", params={"tenant": "default"}).status_code == 200
    browser.click(f"{card} [data-delete]")
    browser.click("#confirm-yes")
    browser.wait_text("#head-status", "Deleted mood")
    assert embed_gateway.admin("GET", "/heads/mood", params={"tenant": "default"}).status_code == 404
    assert "No classifier head yet." in browser.text("#page-heads")
    assert browser.console_errors() == []


def test_the_heads_page_shows_the_api_errors_as_they_are(
    embed_gateway: RunningGateway, browser: Browser, tmp_path: Path
) -> None:
    wrong = _head(seed=3, dim=EMBED_DIM + 1)
    refused = embed_gateway.admin("PUT", "/heads/bad", json=wrong)
    assert refused.status_code == 400
    file, not_json = tmp_path / "bad.json", tmp_path / "notes.json"
    file.write_text(json.dumps(wrong))
    not_json.write_text("labels: [a, b]")
    console_sign_in(browser, embed_gateway.url, ADMIN_KEY, admin=True)
    browser.click("#nav-heads")
    _upload(browser, "bad", "", file)
    shown = browser.wait_text("#head-upload-status", refused.json()["error"]["message"])
    assert shown == refused.json()["error"]["message"]
    _upload(browser, "bad", "", not_json)
    browser.wait_text("#head-upload-status", "notes.json is not JSON")
    assert embed_gateway.admin("GET", "/heads").json()["data"] == []


def test_a_tenant_admin_sees_its_own_and_global_heads_only(embed_gateway: RunningGateway, browser: Browser) -> None:
    for tenant in ("acme", "globex"):
        assert embed_gateway.admin("POST", "/tenants", json={"name": tenant}).status_code == 201
        put = embed_gateway.admin("PUT", f"/heads/{tenant}-mood", json=_head(seed=4), params={"tenant": tenant})
        assert put.status_code == 201, put.text
    assert embed_gateway.admin("PUT", "/heads/shared", json=_head(seed=5)).status_code == 201
    console_sign_in(browser, embed_gateway.url, tenant_admin_key(embed_gateway, "acme"), admin=True)
    browser.click("#nav-heads")
    page = browser.wait_text("#page-heads", "acme-mood")
    assert "globex" not in page and "shared" in page
    assert browser.text("[data-head=shared] .head-owner") == "global"
    owners = browser.js("return [...document.querySelectorAll('#head-owner option')].map(o => o.value);")
    assert owners == ["", "acme"]
    forbidden = embed_gateway.admin("DELETE", "/heads/shared", key=tenant_admin_key(embed_gateway, "acme"))
    assert forbidden.status_code == 403
    browser.click("[data-head=shared] [data-delete]")
    browser.click("#confirm-yes")
    browser.wait_text("#head-status", forbidden.json()["error"]["message"])
    assert embed_gateway.admin("GET", "/heads/shared").status_code == 200

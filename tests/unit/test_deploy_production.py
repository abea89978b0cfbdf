"""The production overlay and what keeps the deployment running: every value the operator
must choose is a SET-ME that fails loudly (the API server refuses it, no node can pull
it) and filling them leaves none; production names a registry on every image, a storage
class and the monitoring label; the application apply holds no namespace, volume or
Secret; every engine flag the gateway depends on agrees with the Settings it builds;
the model Job's script, run here against a scratch folder, is idempotent and swaps the
model in whole; the stop and start budgets; the exposure examples. Renders with kubectl
only (skipped where it is missing).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from adaptserve.config import Settings
from tests.helpers import (
    DEPLOY,
    ENGINE_DEPLOYMENT,
    GATEWAY_DEPLOYMENT,
    K8sObj,
    all_of,
    container_of,
    deploy_parts,
    expanded_args,
    flag_value,
    image_registry,
    images_of,
    kustomize,
    one_of,
    pod_labels,
    render_overlay,
    resolved_env,
    secret_value,
    selector_matches,
    with_examples,
)

ROOT = DEPLOY.parent
GATEWAY, ENGINE, DATA_CLAIM = GATEWAY_DEPLOYMENT, ENGINE_DEPLOYMENT, "adaptserve-data"
K8S_VERSION = "1.30.0"
PLACEHOLDER = "REPLACE-ME"  # what secrets.env.example holds


def test_production_holds_placeholders_and_no_database() -> None:
    rendered = render_overlay("production")
    for secret in all_of(rendered, "Secret"):
        for key in secret.get("stringData", {}) | secret.get("data", {}):
            value = secret_value(rendered, secret["metadata"]["name"], key)
            assert value == "" or PLACEHOLDER in value, f"{key}: no real secret in git"
    assert {d["metadata"]["name"] for d in all_of(rendered, "Deployment")} == {GATEWAY, ENGINE}
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


def test_registry_is_read_from_image_references() -> None:
    assert image_registry("adaptserve:0.1.0") is None and image_registry("vllm/vllm-openai:v1") is None
    assert image_registry("docker.io/vllm/vllm-openai:v1") == "docker.io"
    assert image_registry("localhost:5000/adaptserve:0.1.0") == "localhost:5000"


def test_production_names_a_registry_on_every_image() -> None:
    images = images_of(render_overlay("production"))
    assert images
    for image in images:
        assert image_registry(image), f"{image} names no registry"


def test_production_names_a_storage_class_for_the_shared_volume() -> None:
    claim = one_of(render_overlay("production"), "PersistentVolumeClaim", DATA_CLAIM)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["spec"].get("storageClassName"), "a managed cluster's default class is block storage"


def test_every_monitoring_object_carries_the_prometheus_selector_label(gpu_rendered: tuple[K8sObj, ...]) -> None:
    monitoring = [o for o in gpu_rendered if o["apiVersion"].startswith("monitoring.coreos.com/")]
    assert {o["kind"] for o in monitoring} == {"ServiceMonitor", "PrometheusRule"}
    releases = {o["metadata"].get("labels", {}).get("release") for o in monitoring}
    assert len(releases) == 1 and None not in releases, f"release labels: {releases}"


def test_unfilled_production_values_cannot_be_applied_or_pulled() -> None:
    """The SET-ME values fail loudly: the API server refuses a claim whose class is not a
    DNS subdomain, and no node resolves a registry under the reserved .invalid domain."""
    rendered = render_overlay("production")
    storage_class = one_of(rendered, "PersistentVolumeClaim", DATA_CLAIM)["spec"]["storageClassName"]
    if SET_ME in storage_class:
        assert not DNS_SUBDOMAIN.fullmatch(storage_class)
    for image in images_of(rendered):
        registry = image_registry(image) or ""
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
    for part in deploy_parts("production"):
        text = (part / "kustomization.yaml").read_text()
        copy = tmp_path / part.relative_to(DEPLOY).as_posix().replace("/", "-")
        shutil.copytree(with_examples(part, tmp_path / "examples"), copy)
        filled = _relocated(text, part, copy).replace(SET_ME + ".invalid", "registry.example.com")
        filled = filled.replace(SET_ME, "efs-sc")
        (copy / "kustomization.yaml").write_text(filled)
        rendered += kustomize(copy)
    assert (production / "kustomization.yaml").read_text().count(SET_ME) >= 1
    text = yaml.safe_dump_all(rendered)
    assert SET_ME not in text
    assert all(image_registry(image) for image in images_of(tuple(rendered)))


def test_the_application_holds_no_namespace_volume_or_secret() -> None:
    """`kubectl apply -k` and `delete -k` of the application never touch what outlives it."""
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl (with its built-in Kustomize) is not installed")
    kinds = {o["kind"] for o in kustomize(DEPLOY / "overlays" / "production")}
    assert kinds.isdisjoint({"Namespace", "PersistentVolumeClaim", "Secret"}), kinds


def test_production_keeps_two_engines_spread_at_serving_priority() -> None:
    rendered = render_overlay("production")
    assert one_of(rendered, "ScaledObject", ENGINE)["spec"]["minReplicaCount"] >= 2
    (priority,) = all_of(rendered, "PriorityClass")
    assert priority["value"] > 0 and priority.get("globalDefault") is not True
    for name in (GATEWAY, ENGINE):
        assert (
            one_of(rendered, "Deployment", name)["spec"]["template"]["spec"]["priorityClassName"]
            == priority["metadata"]["name"]
        )
    spread = one_of(rendered, "Deployment", ENGINE)["spec"]["template"]["spec"]["topologySpreadConstraints"]
    assert {c["topologyKey"] for c in spread} >= {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    engine_labels = pod_labels(one_of(rendered, "Deployment", ENGINE))
    assert all(selector_matches(c["labelSelector"], engine_labels) for c in spread)


# --- the engine's limits and the gateway's settings -------------------------------------


def test_engine_limits_agree_with_the_gateway_settings(
    rendered: tuple[K8sObj, ...], gateway_settings: Settings
) -> None:
    """Every engine flag the gateway depends on, read from the rendered engine and from
    the Settings the gateway builds: the context its request bounds assume, the adapters
    it keeps loaded per engine, the rank it checks uploads against."""
    args = expanded_args(rendered, one_of(rendered, "Deployment", ENGINE))
    vllm = gateway_settings.vllm
    assert vllm.max_model_len == int(flag_value(args, "--max-model-len")), "request bounds assume the engine's context"
    assert vllm.max_lora_rank == int(flag_value(args, "--max-lora-rank"))
    assert vllm.max_loras == int(flag_value(args, "--max-loras"))
    assert vllm.max_cpu_loras == int(flag_value(args, "--max-cpu-loras"))
    assert gateway_settings.max_resident_adapters <= int(flag_value(args, "--max-cpu-loras")), (
        "vLLM must cache every adapter the gateway believes loaded"
    )
    assert int(flag_value(args, "--max-loras")) <= int(flag_value(args, "--max-cpu-loras")), (
        "vLLM refuses fewer CPU slots"
    )
    assert 0 < float(flag_value(args, "--gpu-memory-utilization")) <= 1
    assert int(flag_value(args, "--max-num-seqs")) >= 1


def test_the_limits_check_catches_a_disagreement(rendered: tuple[K8sObj, ...], monkeypatch: pytest.MonkeyPatch) -> None:
    """The comparison above can fail: a gateway told a different context is caught."""
    for name in [n for n in os.environ if n.startswith("ADAPTSERVE_")]:
        monkeypatch.delenv(name)
    env = resolved_env(rendered, container_of(one_of(rendered, "Deployment", GATEWAY)))
    env["ADAPTSERVE_VLLM__MAX_MODEL_LEN"] = str(2 * int(env["ADAPTSERVE_VLLM__MAX_MODEL_LEN"]))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AssertionError, match="context"):
        test_engine_limits_agree_with_the_gateway_settings(rendered, Settings())


# --- the shared volume's owner and the base model -------------------------------------------

MODEL_JOB, MARKER = "adaptserve-model", ".adaptserve-model"


def _script(container: K8sObj) -> str:
    assert container["command"] == ["sh", "-c"], container["name"]
    (script,) = container["args"]
    return str(script)


def _init(deployment: K8sObj, name: str) -> K8sObj:
    (found,) = [c for c in deployment["spec"]["template"]["spec"].get("initContainers", []) if c["name"] == name]
    return found


def test_nothing_reads_the_model_before_the_job_marks_it_complete(
    rendered: tuple[K8sObj, ...], gateway_settings: Settings
) -> None:
    job = one_of(rendered, "Job", MODEL_JOB)
    spec = job["spec"]["template"]["spec"]
    (download,) = spec["containers"]
    script = _script(download)
    assert f"target={gateway_settings.model}\n" in script and f'"$STAGING/{MARKER}"' in script
    mounts = {m["name"]: m for m in download["volumeMounts"]}
    (volume,) = [v for v in spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == DATA_CLAIM]
    assert mounts[volume["name"]]["mountPath"] == str(gateway_settings.data_dir)
    assert not mounts[volume["name"]].get("readOnly")
    assert resolved_env(rendered, download)["MODEL_REPO"], "the overlay names the model"
    for name in (GATEWAY, ENGINE):
        wait = _init(one_of(rendered, "Deployment", name), "wait-for-model")
        assert f"until [ -f {gateway_settings.model}/{MARKER} ]" in _script(wait), name
        assert any(m["mountPath"] == str(gateway_settings.data_dir) for m in wait["volumeMounts"])


def _run_download(rendered: tuple[K8sObj, ...], data: Path, repo: str) -> subprocess.CompletedProcess[str]:
    """The Job's download script, run here against a folder standing for /data, with a
    `python3` that stands for the Hugging Face download (it writes config.json)."""
    (download,) = one_of(rendered, "Job", MODEL_JOB)["spec"]["template"]["spec"]["containers"]
    bin_dir = data.parent / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python3"
    fake.write_text('#!/bin/sh\nmkdir -p "$STAGING" && echo "$MODEL_REPO" > "$STAGING/config.json"\n')
    fake.chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "MODEL_REPO": repo, "MODEL_REVISION": "main"}
    script = _script(download).replace("/data", str(data))
    return subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=30)


def test_the_download_is_idempotent_and_swaps_the_model_in_whole(tmp_path: Path) -> None:
    rendered = render_overlay("production")
    data = tmp_path / "data"
    data.mkdir()
    first = _run_download(rendered, data, "org/one")
    assert first.returncode == 0, first.stderr
    base = data / "models" / "base"
    assert (base / MARKER).read_text().strip() == "org/one@main" and (base / "config.json").exists()
    again = _run_download(rendered, data, "org/one")
    assert again.returncode == 0 and "already in place" in again.stdout
    other = _run_download(rendered, data, "org/two")
    assert other.returncode == 0, other.stderr
    assert (base / "config.json").read_text().strip() == "org/two"
    assert sorted(p.name for p in (data / "models").iterdir()) == ["base"], "no staging or old folder left"
    empty = _run_download(rendered, data / "elsewhere", "")
    assert empty.returncode == 1 and "MODEL_REPO is empty" in empty.stderr


def test_the_job_gives_the_volume_to_the_uid_that_writes_it(rendered: tuple[K8sObj, ...]) -> None:
    """NFS-class volumes ignore fsGroup: the Job's root step chowns /data to the gateway's
    user, and only that step runs as root, with CHOWN and nothing like SYS_ADMIN."""
    gateway_pod = one_of(rendered, "Deployment", GATEWAY)["spec"]["template"]["spec"]["securityContext"]
    spec = one_of(rendered, "Job", MODEL_JOB)["spec"]["template"]["spec"]
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
    rendered = render_overlay("production")
    service = one_of(rendered, "Service", GATEWAY)
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


def test_pods_stop_and_start_within_their_budgets(rendered: tuple[K8sObj, ...], gateway_settings: Settings) -> None:
    """A gateway stopping may finish a stream of request_timeout_s; a rollout is not
    declared stuck while an engine may still be inside its startup probe; engines send
    no usage reports."""
    gateway = one_of(rendered, "Deployment", GATEWAY)
    pod = gateway["spec"]["template"]["spec"]
    pause = int(container_of(gateway)["lifecycle"]["preStop"]["exec"]["command"][-1])
    assert pod["terminationGracePeriodSeconds"] >= gateway_settings.request_timeout_s + pause
    engine = one_of(rendered, "Deployment", ENGINE)
    startup = container_of(engine)["startupProbe"]
    assert engine["spec"]["progressDeadlineSeconds"] > startup["periodSeconds"] * startup["failureThreshold"]
    assert container_of(engine)["lifecycle"]["preStop"]["exec"]["command"][-1].isdigit()
    env = resolved_env(rendered, container_of(engine))
    assert env["VLLM_NO_USAGE_STATS"] == "1" and env["DO_NOT_TRACK"] == "1"

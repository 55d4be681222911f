"""deploy/kubernetes: valid against the Kubernetes API schema (kubernetes-validate, strict:
unknown fields fail), Kustomize-complete, and in agreement with the server: every variable
is a real setting, the probe paths answer 200 on a real server started with the ConfigMap's
settings, the ports are the ones it listens on, the image and user are the Dockerfile's."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import httpx
import kubernetes_validate
import pytest
import yaml

from registry.config import all_keys, environment_name

from support.server import RegistryServer, free_port

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
VARIANTS = ("replicated", "single-node")
KUBERNETES_VERSION = "1.30"
SETTINGS = {environment_name(key) for key in all_keys()}


def documents(variant: str) -> list[dict[str, Any]]:
    docs = []
    for path in sorted((KUBERNETES / variant).glob("*.yaml")):
        docs += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def resources(variant: str) -> list[dict[str, Any]]:
    return [doc for doc in documents(variant) if doc["kind"] != "Kustomization"]


def one(variant: str, kind: str) -> dict[str, Any]:
    [found] = [doc for doc in resources(variant) if doc["kind"] == kind]
    return found


def container(variant: str) -> dict[str, Any]:
    pod = one(variant, "Deployment")["spec"]["template"]["spec"]
    [registry] = [c for c in pod["containers"] if c["name"] == "registry"]
    return registry


def config_map(variant: str) -> dict[str, str]:
    return dict(one(variant, "ConfigMap")["data"])


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_manifest_is_valid_against_the_api_schema(variant: str) -> None:
    found = resources(variant)
    assert {doc["kind"] for doc in found} >= {"Deployment", "Service", "Ingress", "ConfigMap"}
    for doc in found:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validation_catches_a_misspelt_field() -> None:
    broken = copy.deepcopy(one("replicated", "Deployment"))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbes"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_the_kustomization_lists_every_file(variant: str) -> None:
    [kustomization] = [d for d in documents(variant) if d["kind"] == "Kustomization"]
    files = {p.name for p in (KUBERNETES / variant).glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)


def test_the_replicated_variant_is_for_a_company() -> None:
    deployment = one("replicated", "Deployment")
    assert deployment["spec"]["replicas"] >= 2
    budget = one("replicated", "PodDisruptionBudget")
    assert budget["spec"]["selector"] == deployment["spec"]["selector"]
    settings = config_map("replicated")
    assert settings["REGISTRY_DATABASE_URL"].startswith("postgresql+asyncpg://")
    assert settings["REGISTRY_STORAGE_DRIVER"] == "s3"
    secret_files = {e["name"]: e["value"] for e in container("replicated")["env"]}
    assert set(secret_files) == {
        "REGISTRY_DATABASE_PASSWORD_FILE",
        "REGISTRY_STORAGE_S3_ACCESS_KEY_FILE",
        "REGISTRY_STORAGE_S3_SECRET_KEY_FILE",
        "REGISTRY_AUTH_KEYS_SECRET_FILE",
    }
    assert settings["REGISTRY_AUTH_KEYS_STORE"] == "database"  # the replicas share the keys
    annotations = one("replicated", "Ingress")["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-body-size"] == "0"
    assert annotations["nginx.ingress.kubernetes.io/proxy-request-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variable_is_a_real_setting(variant: str) -> None:
    names = set(config_map(variant)) | {e["name"] for e in container(variant).get("env", [])}
    unknown = {
        name for name in names
        if name not in SETTINGS and name.removesuffix("_FILE") not in SETTINGS
    }  # fmt: skip
    assert not unknown


@pytest.mark.parametrize("variant", VARIANTS)
def test_image_user_ports_and_volumes_match_the_image(variant: str) -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    pod = one(variant, "Deployment")["spec"]["template"]["spec"]
    images = {c["image"] for c in pod["containers"] + pod.get("initContainers", [])}
    assert images == {f"pocket-registry:{version}"}
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    uid = re.search(r"useradd .*--uid (\d+)", dockerfile, re.S)
    assert uid and pod["securityContext"]["runAsUser"] == int(uid[1])
    registry = container(variant)
    assert registry["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in registry["volumeMounts"]}
    assert {"/var/lib/registry", "/tmp"} <= mounts  # the data folder and the run folder
    settings = config_map(variant)
    ports = {p["name"]: p["containerPort"] for p in registry["ports"]}
    assert ports["http"] == int(settings["REGISTRY_SERVER_ADDR"].rsplit(":", 1)[1])
    assert ports["metrics"] == int(settings["REGISTRY_SERVER_METRICS_ADDR"].rsplit(":", 1)[1])
    template = one(variant, "Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert int(template["prometheus.io/port"]) == ports["metrics"]
    service_ports = one(variant, "Service")["spec"]["ports"]
    assert all(p["targetPort"] in ports for p in service_ports)
    seconds = one(variant, "Deployment")["spec"]["template"]["spec"]
    grace = seconds["terminationGracePeriodSeconds"]
    assert grace > int(settings["REGISTRY_SERVER_SHUTDOWN_DELAY"]) + int(
        settings["REGISTRY_SERVER_SHUTDOWN_TIMEOUT"]
    )


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_and_metrics_answer_on_a_server_with_these_settings(
    variant: str, tmp_path: Path
) -> None:
    """The ConfigMap's settings (the address and database made local), on a real server:
    every probe path answers 200 on the probe's port, /metrics on the metrics address."""
    settings = config_map(variant)
    metrics_port = free_port()
    env = {
        **settings,
        "REGISTRY_SERVER_METRICS_ADDR": f"127.0.0.1:{metrics_port}",
        "REGISTRY_SERVER_PUBLIC_URL": "",
    }
    local = ("REGISTRY_DATABASE_", "REGISTRY_STORAGE_")
    for name in list(env):  # the cluster's services are not here: local ones instead
        if name.startswith(local) or name in ("REGISTRY_SERVER_ADDR", "REGISTRY_DATA_DIR"):
            del env[name]
    for variable in container(variant).get("env", []):  # secrets, as files of our own
        if variable["name"] == "REGISTRY_AUTH_KEYS_SECRET_FILE":
            (tmp_path / "keys-secret").write_text("a test's secret, 32 characters or more\n")
            env[variable["name"]] = str(tmp_path / "keys-secret")
    server = RegistryServer(tmp_path / "data", env=env)
    server.start()
    try:
        registry = container(variant)
        probes = [registry[k] for k in ("startupProbe", "livenessProbe", "readinessProbe")]
        for probe in probes:
            assert probe["httpGet"]["port"] == "http"
            assert httpx.get(f"{server.url}{probe['httpGet']['path']}").status_code == 200
        assert httpx.get(f"{server.url}/v2/").status_code == 401  # auth on, as configured
        annotations = one(variant, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        page = httpx.get(f"http://127.0.0.1:{metrics_port}{annotations['prometheus.io/path']}")
        assert page.status_code == 200 and "registry_http_requests_total" in page.text
        assert httpx.get(f"{server.url}/metrics").status_code == 404  # not on the clients' port
    finally:
        server.stop()

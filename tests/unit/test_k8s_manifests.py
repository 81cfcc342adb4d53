"""The Kubernetes manifests under deploy/k8s, checked offline against what they deploy.

No cluster: every resource the kustomization lists is validated against the
Kubernetes API schema (kubernetes-validate ships them), and against crmsync itself:
the ConfigMap's config passes crmsync's own loader, each probe and Service reaches the
port its service's config listens on, every secret the config names comes from the
Secret, and every container runs the image the Dockerfile builds, with the config
where the image reads it.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path, PurePosixPath
from typing import Any, Final

import kubernetes_validate
import pytest
import yaml
from pydantic import BaseModel

from services.core.config import Settings, TopicsSettings, parse_settings
from services.core.settings_base import SecretRef

pytestmark = pytest.mark.unit

REPO_ROOT: Final = Path(__file__).resolve().parents[2]
K8S: Final = REPO_ROOT / "deploy" / "k8s"
# The oldest Kubernetes the manifests are meant for.
KUBERNETES_VERSION: Final = "1.30"
CONFIG_KEY: Final = "crmsync.yaml"
PLACEHOLDER: Final = "replace-me"
SERVICES: Final = ("ingest", "mapper", "writer", "outbound", "console")
WORKLOADS: Final = frozenset({"Deployment", "StatefulSet"})
# What a listener reached by probes and Services must bind to (not a bind itself).
ANY_ADDRESS: Final = frozenset({"0.0.0.0", "::"})  # noqa: S104

Resource = dict[str, Any]


def _kustomization() -> Resource:
    loaded: Resource = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    return loaded


def _resources() -> list[Resource]:
    found: list[Resource] = []
    for name in _kustomization()["resources"]:
        text = (K8S / name).read_text(encoding="utf-8")
        found.extend(doc for doc in yaml.safe_load_all(text) if doc is not None)
    return found


def _one(kind: str, name: str | None = None) -> Resource:
    matches = [
        r
        for r in _resources()
        if r["kind"] == kind and (name is None or r["metadata"]["name"] == name)
    ]
    assert len(matches) == 1, f"expected one {kind} {name or ''}, found {len(matches)}"
    return matches[0]


def _workload(service: str) -> Resource:
    matches = [
        r for r in _resources() if r["kind"] in WORKLOADS and r["metadata"]["name"] == service
    ]
    assert len(matches) == 1, f"expected one Deployment or StatefulSet named {service}"
    return matches[0]


def _container(workload: Resource) -> Resource:
    containers: list[Resource] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1, f"{workload['metadata']['name']}: one container expected"
    return containers[0]


def _all_containers() -> list[tuple[Resource, Resource]]:
    return [
        (workload, container)
        for workload in _resources()
        if workload["kind"] in WORKLOADS
        for container in workload["spec"]["template"]["spec"]["containers"]
    ]


def _settings() -> Settings:
    config_map = _one("ConfigMap")
    return parse_settings(config_map["data"][CONFIG_KEY], file=f"deploy/k8s ConfigMap {CONFIG_KEY}")


def _container_port(container: Resource, port: int | str) -> int:
    """A port as a probe or Service names it (number or name) as the container's number."""
    if isinstance(port, int):
        return port
    numbers = [p["containerPort"] for p in container.get("ports", []) if p.get("name") == port]
    assert numbers, f"container {container['name']} has no port named {port!r}"
    return int(numbers[0])


def _secret_envs(value: object) -> set[str]:
    """The environment variables every SecretRef in a config (section) names."""
    if isinstance(value, SecretRef):
        assert value.env is not None, "a {file: ...} secret needs a volume these manifests lack"
        return {value.env}
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        return set().union(*(_secret_envs(getattr(value, name)) for name in fields))
    if isinstance(value, dict):
        return set().union(*(_secret_envs(item) for item in value.values()))
    if isinstance(value, list | tuple):
        return set().union(*(_secret_envs(item) for item in value))
    return set()


def _dockerfile_env(name: str) -> str:
    text = (REPO_ROOT / "Dockerfile").read_text(encoding="utf-8")
    match = re.search(rf"\b{name}=(\S+)", text)
    assert match, f"the Dockerfile sets no {name}"
    return match.group(1)


# --- the manifests themselves ---------------------------------------------------------------


def test_the_kustomization_lists_every_manifest() -> None:
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(_kustomization()["resources"]) == files


@pytest.mark.parametrize(
    "resource", _resources(), ids=lambda r: f"{r['kind']}-{r['metadata']['name']}"
)
def test_every_resource_matches_the_kubernetes_api_schema(resource: Resource) -> None:
    # strict: an unknown field (a misspelt probe, say) is an error, not silently dropped.
    kubernetes_validate.validate(resource, KUBERNETES_VERSION, strict=True)


# --- the config -----------------------------------------------------------------------------


def test_the_config_passes_crmsyncs_own_loader_and_targets_a_cluster() -> None:
    settings = _settings()
    assert settings.store.kind == "postgres"
    for server in settings.kafka.bootstrap_servers.split(","):
        host = server.rsplit(":", 1)[0]
        assert host not in {"127.0.0.1", "localhost"}, "Kafka must be the cluster's Service"
    for service in SERVICES:
        listen = getattr(settings.services, service).http
        assert listen.host in ANY_ADDRESS, f"{service} listens on {listen.host}: probes fail"
    assert settings.services.ingest.admin.host in ANY_ADDRESS


def test_the_topics_change_only_their_replication() -> None:
    # A topic written in the config replaces its whole default: barrier's single
    # partition or a compacted topic's cleanup policy must be written out again.
    ours = _settings().kafka.topics
    defaults = TopicsSettings()
    for name in TopicsSettings.model_fields:
        if name == "prefix":
            continue
        mine = getattr(ours, name).model_dump(exclude={"replication_factor"})
        assert mine == getattr(defaults, name).model_dump(exclude={"replication_factor"}), name


# --- probes, ports and Services -------------------------------------------------------------


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_its_module_with_probes_on_its_config_port(service: str) -> None:
    container = _container(_workload(service))
    assert container["command"] == ["python", "-m", f"services.{service}"]
    port = getattr(_settings().services, service).http.port
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        check = container[probe]["httpGet"]
        assert check["path"] == path, f"{service} {probe}"
        assert _container_port(container, check["port"]) == port, f"{service} {probe}"


def test_the_ingest_services_reach_the_webhook_and_admin_ports() -> None:
    ingest = _settings().services.ingest
    workload = _workload("ingest")
    container = _container(workload)
    labels = workload["spec"]["template"]["metadata"]["labels"]
    for name, port in (("ingest", ingest.http.port), ("ingest-admin", ingest.admin.port)):
        service = _one("Service", name)
        assert service["spec"]["selector"].items() <= labels.items(), name
        targets = [_container_port(container, p["targetPort"]) for p in service["spec"]["ports"]]
        assert targets == [port], name


def test_every_service_selects_the_pods_of_a_workload() -> None:
    pod_labels = [
        r["spec"]["template"]["metadata"]["labels"] for r in _resources() if r["kind"] in WORKLOADS
    ]
    for service in (r for r in _resources() if r["kind"] == "Service"):
        selector = service["spec"]["selector"].items()
        assert any(selector <= labels.items() for labels in pod_labels), service["metadata"]


def test_every_workload_selects_its_own_pods() -> None:
    for workload in (r for r in _resources() if r["kind"] in WORKLOADS):
        selector = workload["spec"]["selector"]["matchLabels"].items()
        assert selector <= workload["spec"]["template"]["metadata"]["labels"].items()


# --- secrets, config mount, image -------------------------------------------------------------


def test_every_secret_the_config_names_comes_from_the_secret() -> None:
    secret = _one("Secret")
    named = _secret_envs(_settings())
    assert named, "the config names no secret: the check below would prove nothing"
    missing = named - set(secret["stringData"])
    assert not missing, f"the Secret lacks {sorted(missing)}"
    for workload, container in _all_containers():
        sources = [s["secretRef"]["name"] for s in container.get("envFrom", []) if "secretRef" in s]
        assert sources == [secret["metadata"]["name"]], workload["metadata"]["name"]


def test_the_secret_template_holds_placeholders_only() -> None:
    values = _one("Secret")["stringData"]
    assert values
    assert {name: PLACEHOLDER for name in values} == values


def test_the_config_is_mounted_where_the_image_reads_it() -> None:
    path = PurePosixPath(_dockerfile_env("CRMSYNC_CONFIG"))
    config_map = _one("ConfigMap")
    assert set(config_map["data"]) == {path.name}
    for workload, container in _all_containers():
        name = workload["metadata"]["name"]
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("CRMSYNC_CONFIG", str(path)) == str(path), name
        volumes = {
            v["name"]: v["configMap"]["name"]
            for v in workload["spec"]["template"]["spec"]["volumes"]
            if "configMap" in v
        }
        mounted = [
            m
            for m in container["volumeMounts"]
            if volumes.get(m["name"]) == config_map["metadata"]["name"]
        ]
        assert [m["mountPath"] for m in mounted] == [str(path.parent)], name


def test_every_container_runs_the_image_the_dockerfile_builds() -> None:
    compose = yaml.safe_load((REPO_ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    image = str(compose["x-crmsync"]["image"]).split(":", 1)[0]
    images = _kustomization()["images"]
    assert [i["name"] for i in images] == [image]
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert images[0]["newTag"] == pyproject["project"]["version"]
    uid = re.search(r"useradd\b[^\n]*--uid (\d+)", (REPO_ROOT / "Dockerfile").read_text())
    assert uid
    for workload, container in _all_containers():
        name = workload["metadata"]["name"]
        assert container["image"] == image, name
        pod_security = workload["spec"]["template"]["spec"]["securityContext"]
        assert pod_security["runAsUser"] == int(uid.group(1)), name


# --- the mapper's state ---------------------------------------------------------------------


def test_the_mapper_keeps_its_state_on_its_own_volume_under_a_stable_name() -> None:
    mapper = _workload("mapper")
    assert mapper["kind"] == "StatefulSet"
    container = _container(mapper)
    claims = {t["metadata"]["name"] for t in mapper["spec"]["volumeClaimTemplates"]}
    data_dir = str(_settings().services.mapper.data_dir)
    on_claims = [m["mountPath"] for m in container["volumeMounts"] if m["name"] in claims]
    assert data_dir in on_claims
    env = {e["name"]: e for e in container["env"]}
    instance = env["CRMSYNC_MAPPER_INSTANCE_ID"]["valueFrom"]["fieldRef"]["fieldPath"]
    assert instance == "metadata.name"
    governing = _one("Service", mapper["spec"]["serviceName"])
    assert governing["spec"]["clusterIP"] == "None"

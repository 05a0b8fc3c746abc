"""deploy/kubernetes: every manifest is valid against the Kubernetes API schemas (the
kubernetes-validate package bundles them, strict: an unknown field is an error), and the
manifests agree with each other and with the CLI: the settings are ones `ofd` reads, the probes
and Services use the ports the settings open, devices never reach the control API, the topic has
the replication the durability contract needs."""

import posixpath
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from deploy_files import DEPLOY, FOREIGN_ENV, cli_args, read_by_cli

from ingest.settings import load_secret

KUBE = DEPLOY / "kubernetes"
KUSTOMIZATION = KUBE / "kustomization.yaml"
OPERATORS_NAMESPACE = "ofd-operators"
MONITORING_NAMESPACE = "monitoring"


def _documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def _resources() -> list[dict[str, Any]]:
    files = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    return [doc for name in files for doc in _documents(KUBE / name)]


def _one(kind: str, name: str) -> dict[str, Any]:
    found = [r for r in _resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    assert len(found) == 1, (kind, name)
    return found[0]


def _settings() -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap", "ofd-settings")["data"]
    return data


def _container(deployment: str, name: str) -> dict[str, Any]:
    spec = _one("Deployment", deployment)["spec"]["template"]["spec"]
    (container,) = [c for c in spec["containers"] if c["name"] == name]
    found: dict[str, Any] = container
    return found


def _from_namespace(name: str) -> dict[str, Any]:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _ports(container: dict[str, Any]) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container["ports"]}


def test_kustomization_lists_every_manifest() -> None:
    listed = yaml.safe_load(KUSTOMIZATION.read_text())["resources"]
    on_disk = sorted(p.name for p in KUBE.glob("*.yaml") if p != KUSTOMIZATION)
    assert sorted(listed) == on_disk


@pytest.mark.parametrize(
    "resource",
    [pytest.param(r, id=f"{r['kind']}/{r['metadata']['name']}") for r in _resources()],
)
def test_manifest_is_valid_against_the_api_schema(resource: dict[str, Any]) -> None:
    version = kubernetes_validate.latest_version()
    kubernetes_validate.validate(resource, version, strict=True)
    assert resource["metadata"].get("namespace", "ofd") == "ofd"


def test_validation_catches_a_wrong_field() -> None:
    """The check has teeth: a misspelt field and a wrong type are errors."""
    pdb = _one("PodDisruptionBudget", "ofd-gateway")
    bad = {**pdb, "spec": {**pdb["spec"], "maxUnavialable": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)
    deployment = _one("Deployment", "ofd-gateway")
    bad = {**deployment, "spec": {**deployment["spec"], "replicas": "six"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, kubernetes_validate.latest_version(), strict=True)


def test_every_setting_is_one_the_cli_reads() -> None:
    for name, value in _settings().items():
        assert read_by_cli(name, value), f"neither `ofd serve` nor `ofd load` reads {name}"
    for deployment, container in (("ofd-gateway", "gateway"), ("ofd-loader", "loader")):
        for var in _container(deployment, container).get("env", []):
            name = var["name"]
            assert name in FOREIGN_ENV or read_by_cli(name, "x"), f"{deployment}: {name}"


def test_gateway_runs_as_one_of_several_with_the_shared_secret(tmp_path: Path) -> None:
    settings = _settings()
    env = {**settings, "OFD_GATEWAY_ID": "ofd-gateway-7d9f-abcde"}
    args = cli_args(["serve"], env)
    assert args["journal"] == "kafka"
    assert args["kafka_outage"] == "reject"  # spool needs a disk that outlives the pod
    assert "target_session_attrs=read-write" in args["database_url"]
    user = args["database_url"].removeprefix("postgresql://").split("@")[0]
    assert user == "ofd"  # and no password: that is PGPASSWORD, from a Secret
    container = _container("ofd-gateway", "gateway")
    (gateway_id,) = [v for v in container["env"] if v["name"] == "OFD_GATEWAY_ID"]
    assert gateway_id["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"  # unique per pod
    # The secret file the settings name is the Secret's key, mounted read-only.
    pod = _one("Deployment", "ofd-gateway")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    (mount,) = [m for m in container["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    directory, name = posixpath.split(settings["OFD_SECRET_FILE"])
    assert mount["mountPath"] == directory
    assert [item["path"] for item in volume["secret"]["items"]] == [name]
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # not world-readable
    secret = _one("Secret", volume["secret"]["secretName"])
    # The committed placeholder is refused: a gateway never signs with a published secret.
    placeholder = tmp_path / "secret"
    placeholder.write_text(secret["stringData"][volume["secret"]["items"][0]["key"]])
    with pytest.raises(ValueError, match="hexadecimal"):
        load_secret(tmp_path, None, placeholder)


def test_gateway_pod_is_restricted_and_sized_per_core() -> None:
    pod = _one("Deployment", "ofd-gateway")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod.get("initContainers", []):
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False
        assert context["readOnlyRootFilesystem"] is True
        assert context["capabilities"]["drop"] == ["ALL"]
    resources = _container("ofd-gateway", "gateway")["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS
    assert resources["requests"]["cpu"] == "1"  # one process, one event loop, one core


def test_probes_use_the_ports_the_settings_open() -> None:
    settings = _settings()
    container = _container("ofd-gateway", "gateway")
    ports = _ports(container)
    assert ports == {
        "devices": int(settings["OFD_PORT"]),
        "grpc": int(settings["OFD_GRPC_PORT"]),
        "control": int(settings["OFD_CONTROL_PORT"]),
        "metrics": int(settings["OFD_METRICS_PORT"]),
    }
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}
    assert container["livenessProbe"]["grpc"]["port"] == ports["grpc"]
    loader = _container("ofd-loader", "loader")
    assert _ports(loader) == {"metrics": int(settings["OFD_LOADER_METRICS_PORT"])}
    assert loader["readinessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}
    # The hosts are off loopback, else the probes and Services would reach nothing.
    for host in ("OFD_HOST", "OFD_CONTROL_HOST", "OFD_METRICS_HOST"):
        assert settings[host] == "0.0.0.0"


def test_devices_reach_the_device_ports_only() -> None:
    settings = _settings()
    device_ports = {int(settings["OFD_PORT"]), int(settings["OFD_GRPC_PORT"])}
    operator_ports = {int(settings["OFD_CONTROL_PORT"]), int(settings["OFD_METRICS_PORT"])}
    public = _one("Service", "ofd-gateway-devices")["spec"]
    assert public["type"] in {"LoadBalancer", "NodePort"}
    assert {p["port"] for p in public["ports"]} == device_ports
    assert {p["targetPort"] for p in public["ports"]} == {"devices", "grpc"}
    internal = _one("Service", "ofd-gateway-operators")["spec"]
    assert internal.get("type", "ClusterIP") == "ClusterIP"
    assert {p["port"] for p in internal["ports"]} == operator_ports
    labels = _one("Deployment", "ofd-gateway")["spec"]["template"]["metadata"]["labels"]
    for spec in (public, internal):
        assert spec["selector"].items() <= labels.items()


def test_network_policy_keeps_the_control_api_to_the_operators() -> None:
    settings = _settings()
    control = int(settings["OFD_CONTROL_PORT"])
    metrics = int(settings["OFD_METRICS_PORT"])
    deny = _one("NetworkPolicy", "default-deny-ingress")["spec"]
    assert deny == {"podSelector": {}, "policyTypes": ["Ingress"]}
    policy = _one("NetworkPolicy", "ofd-gateway")["spec"]
    labels = _one("Deployment", "ofd-gateway")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    admitted: dict[int, list[dict[str, Any]]] = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            admitted.setdefault(port["port"], []).extend(rule["from"])
    assert admitted[control] == [_from_namespace(OPERATORS_NAMESPACE)]
    assert admitted[metrics] == [_from_namespace(MONITORING_NAMESPACE)]
    assert set(admitted) == {
        int(settings["OFD_PORT"]), int(settings["OFD_GRPC_PORT"]), control, metrics
    }  # fmt: skip


def test_disruption_budget_keeps_gateways_serving() -> None:
    pdb = _one("PodDisruptionBudget", "ofd-gateway")["spec"]
    deployment = _one("Deployment", "ofd-gateway")["spec"]
    assert pdb["selector"] == deployment["selector"]
    assert pdb["maxUnavailable"] < deployment["replicas"]
    assert deployment["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_loaders_are_one_consumer_group_within_the_partitions() -> None:
    settings = _settings()
    args = cli_args(["load"], settings)
    assert args["kafka_group"] == settings["OFD_KAFKA_GROUP"]
    assert args["kafka_bootstrap"] == settings["OFD_KAFKA_BOOTSTRAP"]
    assert args["metrics_host"] == settings["OFD_METRICS_HOST"]
    container = _container("ofd-loader", "loader")
    assert container["command"] == ["ofd", "load"]  # the group from the shared settings
    names = {v["name"] for v in container.get("env", [])}
    assert "OFD_KAFKA_GROUP" not in names  # no replica overrides it
    replicas = _one("Deployment", "ofd-loader")["spec"]["replicas"]
    assert 1 < replicas <= int(settings["OFD_KAFKA_PARTITIONS"])


def test_topic_job_creates_a_replicated_topic() -> None:
    settings = _settings()
    job = _one("Job", "ofd-kafka-topic")["spec"]["template"]["spec"]
    (container,) = job["containers"]
    command = container["command"]

    def after(flag: str) -> list[str]:
        return [command[i + 1] for i, word in enumerate(command) if word == flag]

    assert after("--replication-factor") == ["3"]
    assert "min.insync.replicas=2" in after("--config")
    assert "unclean.leader.election.enable=false" in after("--config")
    assert after("--partitions") == [settings["OFD_KAFKA_PARTITIONS"]]
    assert after("--topic") == ["$(OFD_KAFKA_TOPIC)"]
    assert "--if-not-exists" in command
    sources = {v["name"]: v["valueFrom"]["configMapKeyRef"]["key"] for v in container["env"]
               if "valueFrom" in v}  # fmt: skip
    assert sources == {"OFD_KAFKA_BOOTSTRAP": "OFD_KAFKA_BOOTSTRAP",
                       "OFD_KAFKA_TOPIC": "OFD_KAFKA_TOPIC"}  # fmt: skip
    # The gateways wait for this topic, so none of them creates it with replication 1.
    pod = _one("Deployment", "ofd-gateway")["spec"]["template"]["spec"]
    (wait,) = pod["initContainers"]
    assert "--describe" in wait["command"][-1]
    assert '"$OFD_KAFKA_TOPIC"' in wait["command"][-1]

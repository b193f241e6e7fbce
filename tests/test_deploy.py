"""deploy/: the kustomize overlays render, every object is valid for a current Kubernetes, the alert rules pass
promtool, and every metric the rules, the dashboard and the autoscaler use exists in the service's real exposition.
The scale overlays run stateless replicas on Milvus; the Milvus Helm values and docs/deploy.md agree with them."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import urllib.parse
import urllib.request

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from common import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES = kubernetes_validate.utils.latest_version()
SINGLE_NODE = ("cpu", "gpu")
SCALE = ("scale", "scale/gpu")  # the cpu and gpu overlays plus the scale/stateless component
OVERLAYS = SINGLE_NODE + SCALE
QUEUE_METRIC = "offshelf_queue_depth_images"

# prometheus-operator's two custom resources are not in kubernetes-validate, and their CRDs cannot be downloaded
# here. These schemas are written from the monitoring.coreos.com/v1 API reference: the fields this project uses or
# might, with the CRDs' types and patterns; any other field is refused (the API server would prune a misspelt one
# without a word). Stricter than the CRDs in two places: a monitor needs endpoints and a group needs rules, since
# without them they do nothing.
DURATION = {
    "type": "string",
    "pattern": "^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}
STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string"},
        "labels": STRINGS,
        "annotations": STRINGS,
    },
}


def custom_resource(kind: str, spec: dict) -> dict:
    return {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "additionalProperties": False,
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": METADATA,
            "spec": spec,
        },
    }


RELABELINGS = {"type": "array", "items": {"type": "object"}}
CRD_SCHEMAS = {
    "ServiceMonitor": custom_resource(
        "ServiceMonitor",
        {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "minProperties": 1,
                    "properties": {"matchLabels": STRINGS, "matchExpressions": {"type": "array"}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"any": {"type": "boolean"}, "matchNames": {"type": "array"}},
                },
                "jobLabel": {"type": "string"},
                "targetLabels": {"type": "array", "items": {"type": "string"}},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "targetPort": {"type": ["integer", "string"]},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
                            "interval": DURATION,
                            "scrapeTimeout": DURATION,
                            "honorLabels": {"type": "boolean"},
                            "relabelings": RELABELINGS,
                            "metricRelabelings": RELABELINGS,
                        },
                    },
                },
            },
        },
    ),
    "PrometheusRule": custom_resource(
        "PrometheusRule",
        {
            "type": "object",
            "required": ["groups"],
            "additionalProperties": False,
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "additionalProperties": False,
                        "properties": {
                            "name": {"type": "string", "minLength": 1},
                            "interval": DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "required": ["expr"],
                                    "additionalProperties": False,
                                    "properties": {
                                        "record": {"type": "string", "minLength": 1},
                                        "alert": {"type": "string", "minLength": 1},
                                        "expr": {"type": ["string", "integer"]},
                                        "for": DURATION,
                                        "keep_firing_for": DURATION,
                                        "labels": STRINGS,
                                        "annotations": STRINGS,
                                    },
                                    # a rule records or alerts, never both; recording rules take no for/annotations
                                    "oneOf": [
                                        {
                                            "required": ["record"],
                                            "not": {
                                                "anyOf": [{"required": [k]} for k in ("alert", "for", "annotations")]
                                            },
                                        },
                                        {"required": ["alert"], "not": {"required": ["record"]}},
                                    ],
                                },
                            },
                        },
                    },
                },
            },
        },
    ),
}


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl (with its built-in kustomize) is needed to render deploy/overlays")
    rendered = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "overlays" / overlay)], capture_output=True, text=True, timeout=60
    )
    assert rendered.returncode == 0, rendered.stderr
    return [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def objects(rendered, kind: str) -> list[dict]:
    return [doc for doc in rendered[1] if doc["kind"] == kind]


def test_overlays_render_every_object(rendered):
    overlay, docs = rendered
    kinds = ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "PrometheusRule", "ServiceMonitor"]
    kinds += ["NetworkPolicy"]
    kinds += ["Service", "Service"]
    # one writer on a volume, or stateless replicas on Milvus that an autoscaler adds and removes
    kinds += ["HorizontalPodAutoscaler"] if overlay in SCALE else ["PersistentVolumeClaim"]
    assert sorted(doc["kind"] for doc in docs) == sorted(kinds)


def test_every_object_is_valid_kubernetes(rendered):
    for doc in rendered[1]:
        if doc["kind"] in CRD_SCHEMAS:
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


def test_the_custom_resource_schemas_refuse_what_the_operator_would_ignore_or_reject(rendered):
    (monitor,) = copy.deepcopy(objects(rendered, "ServiceMonitor"))
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    (rule,) = objects(rendered, "PrometheusRule")
    both = copy.deepcopy(rule)
    both["spec"]["groups"][0]["rules"][0]["alert"] = "Both"
    no_expr = copy.deepcopy(rule)
    del no_expr["spec"]["groups"][0]["rules"][0]["expr"]
    bad_for = copy.deepcopy(rule)
    bad_for["spec"]["groups"][0]["rules"][1]["for"] = "ten minutes"
    for doc in (monitor, both, no_expr, bad_for):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])


def test_deployment_drains_probes_and_hardening(rendered):
    overlay, _ = rendered
    (deployment,) = objects(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    (settings,) = [c for c in objects(rendered, "ConfigMap") if c["metadata"]["name"] == "offshelf-settings"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):  # the plaintext health-only port: TLS-proof
        assert server[probe]["grpc"]["port"] == int(settings["data"]["OFFSHELF_HEALTH_PORT"]) == 50052, probe
    assert server["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    drain, grace = float(settings["data"]["OFFSHELF_DRAIN_SECONDS"]), float(settings["data"]["OFFSHELF_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > server["lifecycle"]["preStop"]["sleep"]["seconds"] + drain + grace
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in (server, *pod["initContainers"]):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert "memory" in container["resources"]["limits"] and "cpu" in container["resources"]["requests"]
    assert "torch" not in server["image"] and "export" in pod["initContainers"][0]["image"]
    for volume in pod["volumes"]:  # the server warns of secret files other users can read
        if "secret" in volume:
            assert volume["secret"].get("defaultMode", 0o644) & 0o007 == 0, volume["name"]
    if overlay.endswith("gpu"):
        assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and pod["tolerations"]
        assert settings["data"]["OFFSHELF_EXECUTION_PROVIDER"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in server["resources"]["limits"]


def test_services_and_monitoring_point_at_the_right_ports(rendered):
    services = {s["metadata"]["name"]: s for s in objects(rendered, "Service")}
    assert {p["name"] for p in services["offshelf"]["spec"]["ports"]} == {"grpc", "http", "metrics"}
    assert services["offshelf-headless"]["spec"]["clusterIP"] == "None"
    (monitor,) = objects(rendered, "ServiceMonitor")
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
    # the operator scrapes the named port of every Service the selector matches: exactly the one that has it
    selected = [
        s
        for s in services.values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert [s["metadata"]["name"] for s in selected if "metrics" in {p["name"] for p in s["spec"]["ports"]}] == [
        "offshelf"
    ]
    (deployment,) = objects(rendered, "Deployment")
    if rendered[0] in SINGLE_NODE:  # one writer per data folder: one replica, no autoscaler
        assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"
        assert not objects(rendered, "HorizontalPodAutoscaler")


def test_every_variable_the_overlays_set_is_a_server_setting(rendered):
    """A misspelt or renamed OFFSHELF_* variable would be ignored by the server without a word."""
    from offshelf.service.settings import ServiceSettings

    known = {f"OFFSHELF_{name.upper()}" for name in ServiceSettings.model_fields}
    (deployment,) = objects(rendered, "Deployment")
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    (config,) = [c for c in objects(rendered, "ConfigMap") if c["metadata"]["name"] == "offshelf-settings"]
    given = set(config["data"]) | {e["name"] for e in server.get("env", [])}
    assert sorted(given - known) == []


@pytest.fixture(scope="module", params=SCALE)
def scaled(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def server_container(rendered) -> tuple[dict, dict]:
    (deployment,) = objects(rendered, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    (server,) = pod["containers"]
    return pod, server


def settings_of(rendered) -> dict[str, str]:
    (config,) = [c for c in objects(rendered, "ConfigMap") if c["metadata"]["name"] == "offshelf-settings"]
    return config["data"]


def test_scale_overlays_run_stateless_replicas_that_roll_without_losing_capacity(scaled):
    pod, server = server_container(scaled)
    (deployment,) = objects(scaled, "Deployment")
    assert not objects(scaled, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert not [v for v in volumes.values() if "persistentVolumeClaim" in v]
    assert set(volumes["data"]) == {"name", "emptyDir"}  # the model export and a cache of heads
    assert {"data", "tmp"} <= {m["name"] for m in server["volumeMounts"]}
    strategy = deployment["spec"]["strategy"]
    assert strategy == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    # the autoscaler owns the replica count: a count in the Deployment would reset it on every apply
    assert "replicas" not in deployment["spec"]
    (spread,) = pod["topologySpreadConstraints"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()


def test_scale_overlays_autoscale_on_cpu_and_queue_depth(scaled):
    overlay, _ = scaled
    (deployment,) = objects(scaled, "Deployment")
    (hpa,) = objects(scaled, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": deployment["apiVersion"],
        "kind": "Deployment",
        "name": deployment["metadata"]["name"],
    }
    low, high = hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]
    assert 2 <= low < high
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(metrics) == {"Resource", "Pods"}
    cpu = metrics["Resource"]["resource"]
    assert cpu["name"] == "cpu" and cpu["target"]["type"] == "Utilization"
    assert 0 < cpu["target"]["averageUtilization"] <= 100
    queue = metrics["Pods"]["pods"]
    assert queue["metric"]["name"] == QUEUE_METRIC and queue["target"]["type"] == "AverageValue"
    # scale out when about two full batches wait per pod: the GPU variant batches 64 images, the CPU one 16
    batch = int(settings_of(scaled)["OFFSHELF_MAX_BATCH_SIZE"])
    assert int(queue["target"]["averageValue"]) == 2 * batch == (128 if overlay.endswith("gpu") else 32)
    assert int(queue["target"]["averageValue"]) < int(settings_of(scaled)["OFFSHELF_MAX_QUEUE_IMAGES"])
    # the budget lets nodes drain one pod at a time and always leaves one serving
    (pdb,) = objects(scaled, "PodDisruptionBudget")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    )
    if "maxUnavailable" in pdb["spec"]:
        assert 1 <= pdb["spec"]["maxUnavailable"] < low
    else:
        assert 1 <= pdb["spec"]["minAvailable"] < low


def test_scale_overlays_point_at_milvus_from_a_config_map_and_a_secret(scaled):
    _, server = server_container(scaled)
    data = settings_of(scaled)
    assert {"configMapRef": {"name": "offshelf-settings"}} in server["envFrom"]
    milvus = urllib.parse.urlsplit(data["OFFSHELF_MILVUS_URI"])
    etcd = urllib.parse.urlsplit(data["OFFSHELF_MILVUS_ETCD_URI"])
    assert milvus.scheme in ("http", "https") and milvus.port == 19530
    assert etcd.scheme in ("http", "https") and etcd.port == 2379
    assert float(data["OFFSHELF_HEADS_SYNC_SECONDS"]) > 0
    assert not [k for k in data if "MILVUS_TOKEN" in k]  # the Milvus token comes from a Secret, never the ConfigMap
    (token,) = [e for e in server.get("env", []) if e["name"] == "OFFSHELF_MILVUS_TOKEN"]
    secret = token["valueFrom"]["secretKeyRef"]
    assert secret["name"] and secret["key"] and secret["optional"] is True  # Milvus without auth needs no Secret
    # the two services are the ones the documented Helm release creates (docs/deploy.md, deploy/milvus/)
    hosts = {milvus.hostname, etcd.hostname}
    for release, namespace in documented_milvus_releases().values():
        assert hosts == {f"{release}.{namespace}.svc", f"{release}-etcd.{namespace}.svc"}


MILVUS_VALUES = DEPLOY / "milvus"
DOCS = ROOT / "docs" / "deploy.md"
# The top-level keys of the zilliztech/milvus chart's values.yaml (chart 5.0.19), against misspelt sections that
# Helm would ignore without a word.
MILVUS_CHART_KEYS = {
    "nameOverride", "fullnameOverride", "cluster", "replicaResourceGroups", "image", "nodeSelector", "tolerations",
    "affinity", "containerSecurityContext", "securityContext", "topologySpreadConstraints", "labels", "annotations",
    "volumes", "volumeMounts", "streaming", "customConfigMap", "extraConfigFiles", "service", "ingress",
    "serviceAccount", "metrics", "livenessProbe", "readinessProbe", "log", "heaptrack", "standalone", "proxy",
    "rootCoordinator", "queryCoordinator", "queryNode", "indexCoordinator", "indexNode", "dataCoordinator", "dataNode",
    "mixCoordinator", "streamingNode", "cdc", "attu", "minio", "etcd", "pulsarv3", "pulsar", "kafka", "woodpecker",
    "externalS3", "externalGcs", "externalEtcd", "externalPulsar", "externalKafka", "tei",
}  # fmt: skip


def milvus_values(name: str) -> dict:
    values = yaml.safe_load((MILVUS_VALUES / f"values-{name}.yaml").read_text())
    assert set(values) <= MILVUS_CHART_KEYS, sorted(set(values) - MILVUS_CHART_KEYS)
    return values


def documented_milvus_releases() -> dict[str, tuple[str, str]]:
    """values file -> (release, namespace) of the `helm upgrade --install` commands in docs/deploy.md."""
    text = DOCS.read_text().replace("\\\n", " ")
    found = {}
    for command in re.findall(r"helm upgrade --install .*zilliztech/milvus.*", text):
        release = re.search(r"--install (\S+) zilliztech/milvus", command).group(1)
        namespace = re.search(r"(?:-n|--namespace) (\S+)", command).group(1)
        values = re.search(r"-f (deploy/milvus/\S+)", command).group(1)
        found[values] = (release, namespace)
    return found


def test_milvus_values_standalone_for_small_and_a_redundant_cluster_for_large():
    small, large = milvus_values("standalone"), milvus_values("cluster")
    assert small["cluster"]["enabled"] is False
    assert small["etcd"]["replicaCount"] == 1 and small["minio"]["mode"] == "standalone"
    assert small["pulsarv3"]["enabled"] is False  # standalone keeps its write-ahead log without Pulsar
    assert large["cluster"]["enabled"] is True
    assert large["etcd"]["replicaCount"] >= 3 and large["etcd"]["replicaCount"] % 2 == 1  # a quorum survives a loss
    for component in ("proxy", "queryNode", "dataNode"):
        assert large[component]["replicas"] >= 2, component
    # one message queue, and object storage that survives a lost disk
    queues = [q for q in ("pulsarv3", "pulsar", "kafka") if large.get(q, {}).get("enabled")]
    assert len(queues) == 1, queues
    assert large["minio"]["mode"] == "distributed" or large.get("externalS3", {}).get("enabled") is True


def test_docs_install_both_milvus_values_files_and_apply_both_scale_overlays():
    releases = documented_milvus_releases()
    assert set(releases) == {f"deploy/milvus/{f.name}" for f in MILVUS_VALUES.glob("values-*.yaml")} and releases
    text = DOCS.read_text()
    assert "helm repo add zilliztech https://zilliztech.github.io/milvus-helm/" in text
    assert "kubectl apply -n offshelf -k deploy/overlays/scale" in text
    assert all(f"deploy/overlays/{overlay}" in text for overlay in SCALE)
    assert 'docs/benchmarks.md, "Embedded store vs Milvus"' in text  # where the capacity's measured rows come from
    assert "## Embedded store vs Milvus" in (DOCS.parent / "benchmarks.md").read_text()


def adapter_rules() -> list[dict]:
    """The prometheus-adapter rules documented in docs/deploy.md (the fenced YAML blocks that hold one)."""
    blocks = re.findall(r"```yaml\n(.*?)```", DOCS.read_text(), flags=re.S)
    values = [yaml.safe_load(b) for b in blocks if "seriesQuery" in b]
    return [rule for v in values for rule in v["rules"]["custom"]]


def test_the_documented_adapter_rule_serves_the_metric_the_autoscaler_asks_for():
    (hpa,) = objects(("scale", render("scale")), "HorizontalPodAutoscaler")
    (pods,) = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    (rule,) = adapter_rules()
    assert METRIC.findall(rule["seriesQuery"]) == [QUEUE_METRIC]
    assert re.fullmatch(rule["name"]["matches"], QUEUE_METRIC) and rule["name"]["as"] == pods["metric"]["name"]
    # per pod, as a Pods metric needs, and only the pods asked about
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
    assert "<<.GroupBy>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]


def rules_file(tmp_path):
    (rule,) = [doc for doc in render("cpu") if doc["kind"] == "PrometheusRule"]
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    return path, rule["spec"]


def test_promtool_accepts_the_rules(prometheus_tools, tmp_path):
    path, spec = rules_file(tmp_path)
    checked = subprocess.run([prometheus_tools[1], "check", "rules", str(path)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    alerts = {r["alert"] for group in spec["groups"] for r in group["rules"] if "alert" in r}
    assert alerts == {
        "OffshelfHighErrorRatio",
        "OffshelfHighLatency",
        "OffshelfQueueSaturated",
        "OffshelfNotReady",
        "OffshelfDomainShift",
    }


METRIC = re.compile(r"\b((?:offshelf|process)_[a-z0-9_]+)")


def test_rules_and_dashboard_use_only_metrics_the_service_exposes(traffic, tmp_path):
    _, spec = rules_file(tmp_path)
    used = {m for group in spec["groups"] for r in group["rules"] for m in METRIC.findall(r["expr"])}
    dashboard = json.loads((DEPLOY / "base" / "grafana-dashboard.json").read_text())
    used |= {m for panel in dashboard["panels"] for t in panel["targets"] for m in METRIC.findall(t["expr"])}
    for overlay in SCALE:
        (hpa,) = [doc for doc in render(overlay) if doc["kind"] == "HorizontalPodAutoscaler"]
        used |= {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"}
    used |= {m for rule in adapter_rules() for m in METRIC.findall(rule["seriesQuery"])}
    text = urllib.request.urlopen(traffic.metrics_url).read().decode()
    exposed = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    # GPU series appear only on CUDA; their names must at least be the ones the collector defines.
    gpu = {m for m in used if m.startswith("offshelf_gpu_")}
    collector = (ROOT / "service" / "state_metrics.py").read_text()
    assert gpu and all(f'"{m}"' in collector for m in gpu)
    missing = sorted(used - gpu - exposed)
    assert not missing, f"used by deploy/ but not exposed by the service: {missing}"
    assert len(used) >= 20


@pytest.mark.parametrize("overlay", ["cpu", "gpu", *SCALE])
def test_the_network_policy_lets_clients_and_prometheus_in_and_nothing_out_but_milvus(overlay):
    (policy,) = [doc for doc in render(overlay) if doc["kind"] == "NetworkPolicy"]
    spec = policy["spec"]
    (deployment,) = [doc for doc in render(overlay) if doc["kind"] == "Deployment"]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert set(spec["policyTypes"]) == {"Ingress", "Egress"}
    ports = {port["port"] for rule in spec["ingress"] for port in rule["ports"]}
    assert ports == {"grpc", "http", "metrics"}
    egress_ports = {port["port"] for rule in spec.get("egress") or [] for port in rule["ports"]}
    assert egress_ports == ({53, 19530, 2379} if overlay in SCALE else set())


def locked(path) -> dict[str, str]:
    """name: version of each package a lock file pins."""
    pins = re.findall(r"^([A-Za-z0-9._-]+)==([^ \\\n]+)", path.read_text(), re.MULTILINE)
    return {re.sub(r"[-_.]+", "-", name).lower(): version for name, version in pins}


def test_the_images_install_pinned_dependencies_on_bases_pinned_by_digest():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def names(requirements: list[str]) -> set[str]:
        return {re.sub(r"[-_.]+", "-", re.split(r"[<>=!~ \[;]", r)[0]).lower() for r in requirements}

    extras = project["optional-dependencies"]
    for image, runtime in (("cpu", "onnxruntime"), ("gpu", "onnxruntime-gpu")):
        pins = locked(DEPLOY / f"requirements-{image}.lock")
        wanted = names(project["dependencies"]) | names(extras[image]) | names(extras["milvus"])
        assert wanted <= set(pins), f"{image}: {sorted(wanted - set(pins))} missing; run make lock"
        other = ({"onnxruntime", "onnxruntime-gpu"} - {runtime}).pop()
        assert runtime in pins and other not in pins, image
        dockerfile = (DEPLOY / f"Dockerfile.{image}").read_text()
        assert f"--require-hashes -r requirements-{image}.lock" in dockerfile
        assert re.search(r"^ARG BASE=\S+@sha256:[0-9a-f]{64}$", dockerfile, re.MULTILINE), image
        assert all(
            line == "FROM ${BASE}" or line == "FROM ${BASE} AS build"
            for line in re.findall(r"^FROM .*", dockerfile, re.MULTILINE)
        )
    assert not [name for name in locked(DEPLOY / "requirements-cpu.lock") if name.startswith("nvidia")]
    cuda13 = locked(DEPLOY / "cuda13.txt")["onnxruntime-gpu"]
    assert locked(DEPLOY / "requirements-gpu.lock")["onnxruntime-gpu"] == cuda13


# cert-manager's Certificate (cert-manager.io/v1, from its API reference): the fields the tls component uses or might.
CERTIFICATE_SCHEMA = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "cert-manager.io/v1"},
        "kind": {"const": "Certificate"},
        "metadata": METADATA,
        "spec": {
            "type": "object",
            "required": ["secretName", "issuerRef"],
            "additionalProperties": False,
            "properties": {
                "secretName": {"type": "string", "minLength": 1},
                "commonName": {"type": "string"},
                "dnsNames": {"type": "array", "minItems": 1, "items": {"type": "string"}},
                "issuerRef": {
                    "type": "object",
                    "required": ["name"],
                    "additionalProperties": False,
                    "properties": {
                        "name": {"type": "string"},
                        "kind": {"enum": ["Issuer", "ClusterIssuer"]},
                        "group": {"type": "string"},
                    },
                },
                "privateKey": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "algorithm": {"enum": ["RSA", "ECDSA", "Ed25519"]},
                        "size": {"type": "integer"},
                        "rotationPolicy": {"enum": ["Never", "Always"]},
                        "encoding": {"enum": ["PKCS1", "PKCS8"]},
                    },
                },
                "duration": {"type": "string", "pattern": "^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"},
                "renewBefore": {"type": "string", "pattern": "^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"},
                "usages": {"type": "array", "items": {"type": "string"}},
            },
        },
    },
}


def render_with(tmp_path, overlay: str, *components: str) -> tuple[str, list[dict]]:
    """An overlay with optional components from deploy/components, as a user's own overlay would include them."""
    root = tmp_path / "mine"
    root.mkdir()
    kustomization = {
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "resources": [os.path.relpath(DEPLOY / "overlays" / overlay, root)],
        "components": [os.path.relpath(DEPLOY / "components" / c, root) for c in components],
    }
    (root / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    rendered = subprocess.run(["kubectl", "kustomize", str(root)], capture_output=True, text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    return overlay, [doc for doc in yaml.safe_load_all(rendered.stdout) if doc]


def validate(docs: list[dict]) -> None:
    for doc in docs:
        if doc["kind"] == "Certificate":
            jsonschema.validate(doc, CERTIFICATE_SCHEMA)
        elif doc["kind"] in CRD_SCHEMAS:
            jsonschema.validate(doc, CRD_SCHEMAS[doc["kind"]])
        else:
            kubernetes_validate.validate(doc, KUBERNETES, strict=True)


@pytest.mark.parametrize("overlay", ["cpu", "scale/gpu"])
def test_the_tls_component_serves_the_certificate_cert_manager_writes(tmp_path, overlay):
    rendered = render_with(tmp_path, overlay, "tls")
    validate(rendered[1])
    (certificate,) = objects(rendered, "Certificate")
    pod, server = server_container(rendered)
    (mount,) = [m for m in server["volumeMounts"] if m["name"] == "tls"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "tls"]
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"] and mount["readOnly"]
    assert volume["secret"]["defaultMode"] & 0o007 == 0  # the server refuses a key other users can write
    settings = settings_of(rendered)
    assert settings["OFFSHELF_TLS_CERT"] == f"{mount['mountPath']}/tls.crt"
    assert settings["OFFSHELF_TLS_KEY"] == f"{mount['mountPath']}/tls.key"
    assert server["readinessProbe"]["grpc"]["port"] == int(settings["OFFSHELF_HEALTH_PORT"])  # plaintext, no TLS
    assert "offshelf.offshelf.svc" in certificate["spec"]["dnsNames"]


@pytest.mark.parametrize("overlay", ["cpu", "scale"])
def test_the_tracing_component_opens_egress_to_the_collector_only(tmp_path, overlay):
    rendered = render_with(tmp_path, overlay, "tracing")
    validate(rendered[1])
    endpoint = urllib.parse.urlsplit(settings_of(rendered)["OTEL_EXPORTER_OTLP_ENDPOINT"])
    namespace = endpoint.hostname.split(".")[1]  # <service>.<namespace>.svc
    (policy,) = objects(rendered, "NetworkPolicy")
    before = objects((overlay, render(overlay)), "NetworkPolicy")[0]["spec"]["egress"]
    added = policy["spec"]["egress"][len(before) :]
    assert policy["spec"]["egress"][: len(before)] == before
    assert {"port": endpoint.port, "protocol": "TCP"} in added[-1]["ports"]
    assert added[-1]["to"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}}}]
    assert {"port": 53, "protocol": "UDP"} in added[0]["ports"]  # the collector's name is looked up
    assert "OTEL_EXPORTER_OTLP_ENDPOINT" in (ROOT / "service" / "tracing.py").read_text()


def test_the_docs_set_both_images_of_an_overlay():
    deployment = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    names = {c["image"] for c in pod["containers"] + pod["initContainers"]}
    assert names == {"offshelf", "offshelf-export"}
    (command,) = re.findall(r"^kustomize edit set image (.+)$", DOCS.read_text(), flags=re.M)
    assert {pair.split("=")[0] for pair in command.split()} == names


def test_the_base_memory_limit_is_sized_as_the_docs_say():
    """docs/deploy.md: the limit is the process (2 GiB) plus twice the index (a save holds a second copy), from the
    per-million figure; the base's 4 GiB holds the number of 1280-d flat vectors the docs state."""
    text = DOCS.read_text()
    per_million = float(re.search(r"flat (\d+\.\d) GB", text)[1]) * 1e9
    process = int(re.search(r"limit = (\d) GiB for the process", text)[1]) << 30
    deployment = yaml.safe_load((DEPLOY / "base" / "deployment.yaml").read_text())
    (server,) = deployment["spec"]["template"]["spec"]["containers"]
    limit = int(server["resources"]["limits"]["memory"].removesuffix("Gi")) << 30
    capacity = (limit - process) / (2 * per_million) * 1e6
    stated = int(re.search(r"base's limit of \d+ GiB holds about ([\d,]+)\s", text)[1].replace(",", ""))
    assert abs(stated - capacity) <= 0.05 * capacity, capacity

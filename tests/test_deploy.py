"""deploy/: the kustomize overlays render, every object is valid for a current Kubernetes, the alert rules pass
promtool, and every metric the rules and the dashboard use exists in the service's real exposition."""

from __future__ import annotations

import copy
import json
import re
import shutil
import subprocess
import urllib.request

import jsonschema
import kubernetes_validate
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from support import ROOT

DEPLOY = ROOT / "deploy"
KUBERNETES = kubernetes_validate.utils.latest_version()
OVERLAYS = ("cpu", "gpu")

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
    kinds = sorted(doc["kind"] for doc in rendered[1])
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "PersistentVolumeClaim",
            "PodDisruptionBudget",
            "PrometheusRule",
            "Service",
            "Service",
            "ServiceMonitor",
        ]
    )


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
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert server[probe]["grpc"]["port"] == 50051, probe
    assert server["lifecycle"]["preStop"]["sleep"]["seconds"] > 0
    (settings,) = [c for c in objects(rendered, "ConfigMap") if c["metadata"]["name"] == "offshelf-settings"]
    drain, grace = float(settings["data"]["OFFSHELF_DRAIN_SECONDS"]), float(settings["data"]["OFFSHELF_GRACE_SECONDS"])
    assert pod["terminationGracePeriodSeconds"] > server["lifecycle"]["preStop"]["sleep"]["seconds"] + drain + grace
    assert pod["securityContext"]["runAsNonRoot"] is True
    for container in (server, *pod["initContainers"]):
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert "memory" in container["resources"]["limits"] and "cpu" in container["resources"]["requests"]
    assert "torch" not in server["image"] and "export" in pod["initContainers"][0]["image"]
    if overlay == "gpu":
        assert server["resources"]["limits"]["nvidia.com/gpu"] == 1
        assert pod["nodeSelector"] and pod["tolerations"]
        assert settings["data"]["OFFSHELF_EXECUTION_PROVIDER"] == "cuda"
    else:
        assert "nvidia.com/gpu" not in server["resources"]["limits"]


def test_services_and_monitoring_point_at_the_right_ports(rendered):
    services = {s["metadata"]["name"]: s for s in objects(rendered, "Service")}
    assert {p["name"] for p in services["offshelf"]["spec"]["ports"]} == {"grpc", "metrics"}
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
    (deployment,) = objects(rendered, "Deployment")  # one writer per data folder: one replica, no autoscaler
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"]["type"] == "Recreate"


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
    text = urllib.request.urlopen(traffic.metrics_url).read().decode()
    exposed = {sample.name for family in text_string_to_metric_families(text) for sample in family.samples}
    # GPU series appear only on CUDA; their names must at least be the ones the collector defines.
    gpu = {m for m in used if m.startswith("offshelf_gpu_")}
    collector = (ROOT / "service" / "state_metrics.py").read_text()
    assert gpu and all(f'"{m}"' in collector for m in gpu)
    missing = sorted(used - gpu - exposed)
    assert not missing, f"used by deploy/ but not exposed by the service: {missing}"
    assert len(used) >= 20

"""deploy/: the image, compose file and Kubernetes manifests keep the rules of issue 8.

No cluster and no Docker engine needed. Every overlay is rendered (with `kubectl kustomize` when
it is installed, else with the small renderer below, which knows the Kustomize features deploy/
uses), the built-in kinds are validated offline against the Kubernetes schemas
(kubernetes-validate), the custom resources against their operators' CRD schemas vendored in
deploy/schemas/crds, the compose file against the Compose Specification's schema vendored in
deploy/schemas, and the properties platform teams rely on are asserted on the result.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import shutil
import subprocess
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from civicline.common.settings import _ALL_NAMES, SECRET_NAMES
from civicline.common.topology import CONSUMED_QUEUES
from support.manifest_schemas import (
    closed_schema,
    custom_resource_problems,
    load_crd_schemas,
    problems,
)

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "k8s"
SCHEMAS = DEPLOY / "schemas"
OVERLAYS = ("dev", "production", "surge")
KUBERNETES_VERSION = "1.32.0"
SERVICES = {"ingress": 8080, "router": 8081, "responder": 8082, "audit": 8083}
CONSUMERS = ("router", "responder", "audit")
SINGLE_ACTIVE_CONSUMER_QUEUES = {q.name for q in CONSUMED_QUEUES if q.single_active_consumer}
# Variables the deploy files may set besides civicline's own settings.
OTHER_NAMES = {"SIMULATOR_PORT"}
KNOWN_NAMES = set(_ALL_NAMES) | {f"{name}_FILE" for name in SECRET_NAMES} | OTHER_NAMES

Doc = dict[str, Any]


def load_all(path: Path) -> list[Doc]:
    # YAML aliases (&labels / *labels) load as one shared object, which Kustomize copies: a JSON
    # round trip unshares them (deepcopy would keep them shared).
    docs = yaml.safe_load_all(path.read_text(encoding="utf-8"))
    return [json.loads(json.dumps(doc)) for doc in docs if doc]


# --- a minimal Kustomize, for machines without kubectl ----------------------------------------


def _kustomization(directory: Path) -> Doc:
    loaded = yaml.safe_load((directory / "kustomization.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def _resolve_pointer(doc: Any, path: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, parts[-1]


def _apply_json6902(doc: Doc, operations: list[Doc]) -> None:
    for operation in operations:
        parent, key = _resolve_pointer(doc, operation["path"])
        if isinstance(parent, list):
            if key == "-":
                parent.append(operation["value"])
            elif operation["op"] == "add":
                parent.insert(int(key), operation["value"])
            else:
                parent[int(key)] = operation["value"]
        else:
            assert operation["op"] == "add" or key in parent, operation
            parent[key] = operation["value"]


def _matches(doc: Doc, target: Doc) -> bool:
    if "kind" in target and doc["kind"] != target["kind"]:
        return False
    return "name" not in target or re.fullmatch(target["name"], doc["metadata"]["name"]) is not None


def build(directory: Path) -> list[Doc]:
    """Render a kustomization with the features deploy/ uses (a check, not a Kustomize)."""
    spec = _kustomization(directory)
    docs: list[Doc] = []
    for resource in spec.get("resources", []):
        path = directory / resource
        docs.extend(build(path) if path.is_dir() else load_all(path))
    for generator in spec.get("configMapGenerator", []):
        data: dict[str, str] = {}
        for literal in generator.get("literals", []):
            key, _, value = literal.partition("=")
            data[key] = value
        for entry in generator.get("files", []):
            key, _, file_name = entry.partition("=")
            data[key] = (directory / file_name).read_text(encoding="utf-8")
        if generator.get("behavior") == "merge":
            (existing,) = [
                d
                for d in docs
                if d["kind"] == "ConfigMap" and d["metadata"]["name"] == generator["name"]
            ]
            existing["data"].update(data)
        else:
            metadata = {
                "name": generator["name"],
                "labels": generator.get("options", {}).get("labels", {}),
            }
            docs.append(
                {"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": data}
            )
    for patch in spec.get("patches", []):
        operations = yaml.safe_load(patch["patch"])
        targets = [d for d in docs if _matches(d, patch["target"])]
        assert targets, f"{directory}: patch target {patch['target']} matches nothing"
        for doc in targets:
            _apply_json6902(doc, operations)
    for image in spec.get("images", []):
        for container in _all_containers(docs):
            if container["image"].split(":")[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    if "namespace" in spec:
        for doc in docs:
            if doc["kind"] == "Namespace":
                doc["metadata"]["name"] = spec["namespace"]
            else:
                doc["metadata"]["namespace"] = spec["namespace"]
    for label in spec.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(label["pairs"])
            if label.get("includeTemplates") and "template" in doc.get("spec", {}):
                template_labels = doc["spec"]["template"].setdefault("metadata", {})
                template_labels.setdefault("labels", {}).update(label["pairs"])
    return docs


def _all_containers(docs: list[Doc]) -> Iterator[Doc]:
    for doc in docs:
        if doc["kind"] in {"Deployment", "Job"}:
            yield from doc["spec"]["template"]["spec"]["containers"]


@cache
def _kubectl_render(overlay: str) -> list[Doc] | None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        return None
    result = subprocess.run(
        [kubectl, "kustomize", str(K8S / "overlays" / overlay)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@cache
def render(overlay: str) -> tuple[Doc, ...]:
    rendered = _kubectl_render(overlay)
    return tuple(rendered if rendered is not None else build(K8S / "overlays" / overlay))


def of_kind(docs: tuple[Doc, ...], kind: str) -> dict[str, Doc]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def pod_spec(workload: Doc) -> Doc:
    spec: Doc = workload["spec"]["template"]["spec"]
    return spec


def selects(selector: Doc, labels: dict[str, str]) -> bool:
    match_labels = selector.get("matchLabels", {})
    if not all(labels.get(k) == v for k, v in match_labels.items()):
        return False
    for expression in selector.get("matchExpressions", []):
        assert expression["operator"] == "In"
        if labels.get(expression["key"]) not in expression["values"]:
            return False
    return bool(match_labels or selector.get("matchExpressions"))


# --- the Kustomize tree -----------------------------------------------------------------------


def kustomizations() -> list[Path]:
    return sorted(K8S.rglob("kustomization.yaml"))


def test_every_yaml_file_in_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 15
    for path in files:
        assert load_all(path), path


@pytest.mark.parametrize("path", kustomizations(), ids=lambda p: str(p.parent.relative_to(K8S)))
def test_kustomization_references_exist(path: Path) -> None:
    spec = _kustomization(path.parent)
    for resource in spec.get("resources", []):
        target = path.parent / resource
        assert target.is_file() or (target / "kustomization.yaml").is_file(), target
    for patch in spec.get("patches", []):
        if "path" in patch:
            assert (path.parent / patch["path"]).is_file()
    for generator in spec.get("configMapGenerator", []):
        for entry in generator.get("files", []):
            assert (path.parent / entry.partition("=")[2]).is_file()


def test_the_expected_overlays_exist() -> None:
    found = {p.parent.relative_to(K8S).as_posix() for p in kustomizations()}
    assert {"base", "infra", "monitoring", *(f"overlays/{o}" for o in OVERLAYS)} <= found


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_fallback_renderer_agrees_with_kubectl(overlay: str) -> None:
    rendered = _kubectl_render(overlay)
    if rendered is None:
        pytest.skip("kubectl is not installed; the fallback renderer is used alone")
    ours = build(K8S / "overlays" / overlay)

    def key(doc: Doc) -> tuple[str, str]:
        return doc["kind"], doc["metadata"]["name"]

    assert sorted(map(key, ours)) == sorted(map(key, rendered))
    theirs = {key(d): d for d in rendered}
    for doc in ours:
        if doc["kind"] in {"Deployment", "ScaledObject", "HorizontalPodAutoscaler"}:
            assert doc["spec"] == theirs[key(doc)]["spec"], key(doc)


# --- rendered overlays ------------------------------------------------------------------------


@cache
def vendored_crds() -> dict[tuple[str, str], Doc]:
    return load_crd_schemas(SCHEMAS / "crds")


def is_built_in(doc: Doc) -> bool:
    """True when kubernetes-validate knows the kind; custom resources need their CRD."""
    try:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
    except kubernetes_validate.SchemaNotFoundError:
        return False
    except kubernetes_validate.ValidationError:
        return True
    return True


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_built_in_kinds_validate_against_kubernetes_schemas(overlay: str) -> None:
    for doc in render(overlay):
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            # A custom resource (KEDA, the operators, Prometheus): checked against its CRD below.
            assert "." in doc["apiVersion"].split("/")[0], doc["kind"]
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: {error.message}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_custom_resources_validate_against_their_vendored_crds(overlay: str) -> None:
    custom = [doc for doc in render(overlay) if not is_built_in(doc)]
    kinds = {doc["kind"] for doc in custom}
    assert {"ScaledObject", "TriggerAuthentication", "RabbitmqCluster", "Cluster"} <= kinds
    if overlay != "dev":
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule"} <= kinds
    for doc in custom:
        found = custom_resource_problems(doc, vendored_crds())
        assert not found, f"{overlay}: {doc['kind']}/{doc['metadata']['name']}: " + "; ".join(found)


def test_every_vendored_crd_is_used_and_says_where_it_came_from() -> None:
    used = {
        (doc["apiVersion"], doc["kind"])
        for overlay in OVERLAYS
        for doc in render(overlay)
        if not is_built_in(doc)
    }
    assert set(vendored_crds()) == used
    for (api_version, kind), vendored in vendored_crds().items():
        group, version = api_version.split("/")
        assert (SCHEMAS / "crds" / f"{group}_{kind}_{version}.json").is_file()
        source = vendored["x-vendored-from"]
        assert re.fullmatch(r"[\w.-]+/[\w.-]+", source["project"]), source
        assert re.fullmatch(r"[0-9a-f]{40}|v?\d+\.\d+\.\d+", source["ref"]), source
        assert source["path"].endswith(".yaml"), source
        assert source["license"], source
        assert vendored["openAPIV3Schema"]["properties"]["spec"], kind
        # Every reduction of the upstream schema is declared where the file says where it's from.
        found = dict(reductions(vendored["openAPIV3Schema"]))
        assert {p: t for p, t in found.items() if t != "opaque"} == source.get("core-types", {})
        assert sorted(p for p, t in found.items() if t == "opaque") == sorted(
            source.get("opaque", [])
        )


def reductions(schema: Doc, path: str = "") -> Iterator[tuple[str, str]]:
    """(path, core type or "opaque") for each subtree vendor-schemas.py replaced."""
    if "x-kubernetes-core-type" in schema:
        yield path, schema["x-kubernetes-core-type"]
    elif schema.get("x-vendored-opaque"):
        yield path, "opaque"
    for name, sub in schema.get("properties", {}).items():
        yield from reductions(sub, f"{path}.{name}".lstrip("."))
    if isinstance(schema.get("items"), dict):
        yield from reductions(schema["items"], f"{path}[]")


# --- the CRD check refuses what the API server would refuse (or silently drop) -----------------


def scaled_object() -> Doc:
    (doc,) = [
        d
        for d in render("production")
        if d["kind"] == "ScaledObject" and d["metadata"]["name"] == "audit"
    ]
    return copy.deepcopy(doc)


def refusals(doc: Doc) -> list[str]:
    return custom_resource_problems(doc, vendored_crds())


def test_a_scaled_object_with_a_wrong_field_type_is_refused() -> None:
    doc = scaled_object()
    doc["spec"]["maxReplicaCount"] = "4"
    doc["spec"]["triggers"][0]["metadata"]["value"] = 5000  # KEDA's metadata is strings only
    assert refusals(doc) == [
        ".spec.maxReplicaCount: '4' is not of type 'integer'",
        ".spec.triggers[0].metadata.value: 5000 is not of type 'string'",
    ]


def test_a_scaled_object_with_an_unknown_field_is_refused() -> None:
    doc = scaled_object()
    doc["spec"]["pollingIntervall"] = 15  # the API server would prune it: the setting is lost
    doc["spec"]["triggers"][0]["authenticationRef"]["nmae"] = "x"
    doc["metadata"]["lables"] = {"a": "b"}
    assert refusals(doc) == [
        ".metadata: Additional properties are not allowed ('lables' was unexpected)",
        ".spec: Additional properties are not allowed ('pollingIntervall' was unexpected)",
        ".spec.triggers[0].authenticationRef: Additional properties are not allowed "
        "('nmae' was unexpected)",
    ]


def test_a_scaled_object_missing_a_required_field_is_refused() -> None:
    doc = scaled_object()
    del doc["spec"]["scaleTargetRef"]
    del doc["spec"]["triggers"][0]["type"]
    assert refusals(doc) == [
        ".spec: 'scaleTargetRef' is a required property",
        ".spec.triggers[0]: 'type' is a required property",
    ]


def test_a_custom_kind_or_version_without_a_vendored_crd_is_refused() -> None:
    doc = scaled_object()
    doc["apiVersion"] = "keda.sh/v1beta1"
    assert refusals(doc) == [
        "no vendored CRD schema for keda.sh/v1beta1 ScaledObject: vendor it with "
        "scripts/vendor-schemas.py crd (see deploy/README.md)"
    ]
    certificate = {"apiVersion": "cert-manager.io/v1", "kind": "Certificate", "metadata": {}}
    assert refusals(certificate)[0].startswith("no vendored CRD schema for cert-manager.io/v1")


def test_core_types_inside_custom_resources_are_checked_too() -> None:
    (rabbitmq,) = [copy.deepcopy(d) for d in render("production") if d["kind"] == "RabbitmqCluster"]
    pod = rabbitmq["spec"]["override"]["statefulSet"]["spec"]["template"]["spec"]
    del pod["containers"]  # the operator's CRD requires it, even empty, in a pod override
    pod["topologySpreadConstraints"][0]["maxSkew"] = "1"
    assert refusals(rabbitmq) == [
        ".spec.override.statefulSet.spec.template.spec: 'containers' is a required property",
        ".spec.override.statefulSet.spec.template.spec.topologySpreadConstraints[0].maxSkew: "
        "'1' is not of type 'integer'",
    ]
    (postgres,) = [copy.deepcopy(d) for d in render("production") if d["kind"] == "Cluster"]
    postgres["spec"]["resources"]["limit"] = {"cpu": "1"}
    assert refusals(postgres) == [
        ".spec.resources: Additional properties are not allowed ('limit' was unexpected)"
    ]


def test_parts_vendored_opaque_cannot_be_set() -> None:
    (postgres,) = [copy.deepcopy(d) for d in render("production") if d["kind"] == "Cluster"]
    postgres["spec"]["backup"] = {"retentionPolicy": "30d"}
    (refusal,) = refusals(postgres)
    assert refusal.startswith(".spec.backup: this part of the CRD was vendored opaque")


def test_structural_schema_rules() -> None:
    schema = closed_schema(
        {
            "type": "object",
            "properties": {
                "port": {"x-kubernetes-int-or-string": True},
                "free": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                "maybe": {"type": "string", "nullable": True},
                "embedded": {
                    "type": "object",
                    "x-kubernetes-embedded-resource": True,
                    "properties": {"spec": {"type": "object"}},
                },
                "either": {
                    "anyOf": [{"properties": {"a": {"type": "string"}}}, {"required": ["b"]}]
                },
            },
        }
    )
    assert problems({"port": 8080, "free": {"anything": [1]}, "maybe": None}, schema) == []
    assert problems({"port": "http", "either": {"a": "x", "b": 1}}, schema) == []
    embedded = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": {}}
    assert problems({"embedded": embedded}, schema) == []
    assert problems({"port": 1.5, "maybe": 3, "typo": 1}, schema) == [
        "(the document): Additional properties are not allowed ('typo' was unexpected)",
        ".maybe: 3 is not of type 'string', 'null'",
        ".port: 1.5 is not valid under any of the given schemas",
    ]


def test_the_vendor_script_keeps_constraints_and_drops_only_prose() -> None:
    spec = importlib.util.spec_from_file_location(
        "vendor_schemas", REPO / "scripts/vendor-schemas.py"
    )
    assert spec is not None
    assert spec.loader is not None
    vendor = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vendor)
    crd: Doc = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.org", "annotations": {"a": "b"}},
        "spec": {
            "group": "example.org",
            "names": {"kind": "Widget"},
            "versions": [
                {"name": "v1alpha1", "served": False, "schema": {"openAPIV3Schema": {}}},
                {
                    "name": "v1",
                    "served": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "description": "prose",
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "description": "more prose",
                                    "properties": {
                                        "description": {"type": "string", "maxLength": 9},
                                        "pod": {"type": "object", "properties": {}},
                                        "backup": {"type": "object", "properties": {}},
                                    },
                                }
                            },
                        }
                    },
                },
            ],
        },
    }
    source = {"project": "example/widgets", "ref": "v1.0.0", "path": "crd.yaml"}
    # As a Helm chart ships it (kedacore/charts): the templating lines and values are dropped.
    crd["metadata"]["labels"] = {"app.kubernetes.io/name": "{{ .Values.operator.name }}"}
    dumped = yaml.safe_dump(crd).replace(
        "'{{ .Values.operator.name }}'", "{{ .Values.operator.name }}"
    )
    chart_copy = "{{- if .Values.crds.install }}\n" + dumped + "{{- end -}}\n"
    assert "name: {{ .Values.operator.name }}\n" in chart_copy  # not YAML until de-templated
    ((name, vendored),) = vendor.vendored_crds(
        chart_copy,
        source,
        None,
        {"spec.pod": "io.k8s.api.core.v1.PodSpec"},
        ["spec.backup"],
    ).items()
    assert name == "example.org_Widget_v1.json"
    assert vendored["apiVersion"] == "example.org/v1"
    assert vendored["kind"] == "Widget"
    assert vendored["openAPIV3Schema"] == {
        "type": "object",
        "properties": {
            "spec": {
                "type": "object",
                "properties": {
                    "description": {"type": "string", "maxLength": 9},
                    "pod": {"x-kubernetes-core-type": "io.k8s.api.core.v1.PodSpec"},
                    "backup": {"type": "object", "x-vendored-opaque": True},
                },
            }
        },
    }
    assert vendored["x-vendored-from"]["opaque"] == ["spec.backup"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_workload_is_locked_down(overlay: str) -> None:
    docs = render(overlay)
    workloads = [*of_kind(docs, "Deployment").values(), *of_kind(docs, "Job").values()]
    assert {f"{s}" for s in SERVICES} <= set(of_kind(docs, "Deployment"))
    assert "civicline-migrate" in of_kind(docs, "Job")
    for workload in workloads:
        name = workload["metadata"]["name"]
        spec = pod_spec(workload)
        assert spec["automountServiceAccountToken"] is False, name
        assert spec["serviceAccountName"] == "civicline", name
        pod_security = spec["securityContext"]
        assert pod_security["runAsNonRoot"] is True, name
        assert pod_security["runAsUser"] >= 1000, name
        assert pod_security["seccompProfile"] == {"type": "RuntimeDefault"}, name
        tmp_volumes = {v["name"] for v in spec["volumes"] if "emptyDir" in v}
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True, name
            assert security["allowPrivilegeEscalation"] is False, name
            assert security["runAsNonRoot"] is True, name
            assert security["capabilities"] == {"drop": ["ALL"]}, name
            assert security["seccompProfile"] == {"type": "RuntimeDefault"}, name
            for bound in ("requests", "limits"):
                assert set(container["resources"][bound]) == {"cpu", "memory"}, (name, bound)
            tmp = [m for m in container["volumeMounts"] if m["mountPath"] == "/tmp"]
            assert tmp, name
            assert tmp[0]["name"] in tmp_volumes, name
            assert container["command"][0].startswith("civicline-"), name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_have_probes_ports_and_drain_time(overlay: str) -> None:
    docs = render(overlay)
    config = of_kind(docs, "ConfigMap")["civicline-config"]["data"]
    shutdown = float(config.get("CIVICLINE_SHUTDOWN_TIMEOUT", "20"))
    deployments = of_kind(docs, "Deployment")
    for service, port in SERVICES.items():
        spec = pod_spec(deployments[service])
        (container,) = spec["containers"]
        assert container["command"] == [f"civicline-{service}"]
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env[f"{service.upper()}_PORT"] == str(port)
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
        pre_stop = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {})
        margin = spec["terminationGracePeriodSeconds"] - shutdown - pre_stop.get("seconds", 0)
        assert 5 <= margin <= 30, (service, margin)
        service_object = of_kind(docs, "Service")[service]
        assert selects(
            {"matchLabels": service_object["spec"]["selector"]}, _labels(deployments[service])
        )
    # CIVICLINE_HTTP_HOST must be 0.0.0.0 in containers, or no probe reaches the server.
    assert (
        of_kind(docs, "ConfigMap")["civicline-config"]["data"]["CIVICLINE_HTTP_HOST"] == "0.0.0.0"  # noqa: S104
    )


def _labels(workload: Doc) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_deployment_scales_by_exactly_one_autoscaler(overlay: str) -> None:
    docs = render(overlay)
    hpa_targets = [
        h["spec"]["scaleTargetRef"]["name"]
        for h in of_kind(docs, "HorizontalPodAutoscaler").values()
    ]
    keda_targets = [
        s["spec"]["scaleTargetRef"]["name"] for s in of_kind(docs, "ScaledObject").values()
    ]
    assert hpa_targets == ["ingress"]
    assert sorted(keda_targets) == sorted(CONSUMERS)
    assert not set(hpa_targets) & set(keda_targets)
    for name in [*hpa_targets, *keda_targets]:
        # An autoscaled Deployment leaves replicas to its autoscaler, or every apply resets it.
        assert "replicas" not in of_kind(docs, "Deployment")[name]["spec"], name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_reads_queue_depth_over_http_with_authentication(overlay: str) -> None:
    docs = render(overlay)
    authentications = of_kind(docs, "TriggerAuthentication")
    queues = {q.name for q in CONSUMED_QUEUES}
    for name, scaled in of_kind(docs, "ScaledObject").items():
        spec = scaled["spec"]
        assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], name
        (trigger,) = spec["triggers"]
        assert trigger["type"] == "rabbitmq"
        assert trigger["metadata"]["protocol"] == "http", name
        assert trigger["metadata"]["mode"] == "QueueLength", name
        assert trigger["metadata"]["queueName"] in queues, name
        assert trigger["authenticationRef"]["name"] in authentications, name
        assert "host" not in trigger["metadata"], "credentials belong in the TriggerAuthentication"
    for authentication in authentications.values():
        (secret,) = authentication["spec"]["secretTargetRef"]
        assert secret["parameter"] == "host"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_single_active_consumer_queues_get_standbys_not_throughput(overlay: str) -> None:
    scaled = of_kind(render(overlay), "ScaledObject")
    for spec in (s["spec"] for s in scaled.values()):
        queue = spec["triggers"][0]["metadata"]["queueName"]
        if queue in SINGLE_ACTIVE_CONSUMER_QUEUES:
            # One consumer is active whatever the count: a few standbys are all that helps.
            assert spec["maxReplicaCount"] <= 3, queue
            if overlay != "dev":
                assert spec["minReplicaCount"] >= 2, f"{queue}: no standby"
    assert scaled["audit"]["spec"]["triggers"][0]["metadata"]["queueName"] == "audit.events"
    assert "audit.events" not in SINGLE_ACTIVE_CONSUMER_QUEUES


def test_surge_grows_ingress_and_audit_not_the_rate_limited_responder() -> None:
    production, surge = render("production"), render("surge")

    def bounds(docs: tuple[Doc, ...], kind: str, name: str) -> tuple[int, int]:
        spec = of_kind(docs, kind)[name]["spec"]
        if kind == "HorizontalPodAutoscaler":
            return spec["minReplicas"], spec["maxReplicas"]
        return spec["minReplicaCount"], spec["maxReplicaCount"]

    hpa = "HorizontalPodAutoscaler"
    assert bounds(surge, hpa, "ingress")[1] >= 3 * bounds(production, hpa, "ingress")[0] >= 9
    assert bounds(surge, hpa, "ingress")[1] > bounds(production, hpa, "ingress")[1]
    assert (
        bounds(surge, "ScaledObject", "audit")[1] > bounds(production, "ScaledObject", "audit")[1]
    )
    assert bounds(surge, "ScaledObject", "responder")[1] <= 3


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_deployment_has_a_disruption_budget_and_a_network_policy(overlay: str) -> None:
    docs = render(overlay)
    budgets = of_kind(docs, "PodDisruptionBudget").values()
    policies = of_kind(docs, "NetworkPolicy").values()
    for name, deployment in of_kind(docs, "Deployment").items():
        labels = _labels(deployment)
        assert any(selects(b["spec"]["selector"], labels) for b in budgets), name
        own = [p for p in policies if p["metadata"]["name"] == name]
        assert own, name
        assert selects(own[0]["spec"]["podSelector"], labels), name
        assert set(own[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, name
    assert any(p["metadata"]["name"] == "civicline-default-deny" for p in policies)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_network_policies_allow_only_what_each_service_needs(overlay: str) -> None:
    policies = of_kind(render(overlay), "NetworkPolicy")
    allowed = {53, 5672, 5432}
    needs = {"ingress": {53, 5672}, "router": allowed, "audit": allowed, "migrate": {53, 5432}}
    needs["responder"] = allowed | {443} | ({8090} if overlay == "dev" else set())
    for name, ports in needs.items():
        egress = {p["port"] for rule in policies[name]["spec"]["egress"] for p in rule["ports"]}
        assert egress == ports, name
    for rule in policies["responder"]["spec"]["egress"]:
        for peer in rule["to"]:
            if "ipBlock" in peer:
                assert [p["port"] for p in rule["ports"]] == [443]
                assert "10.0.0.0/8" in peer["ipBlock"]["except"]
    webhook_sources = [
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in policies["ingress"]["spec"]["ingress"]
        for peer in rule["from"]
    ]
    assert set(webhook_sources) == {"ingress-nginx", "monitoring"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_secrets_are_files_and_every_variable_is_a_setting(overlay: str) -> None:
    docs = render(overlay)
    for data_name in of_kind(docs, "ConfigMap")["civicline-config"]["data"]:
        assert data_name in KNOWN_NAMES, data_name
        assert data_name not in SECRET_NAMES, data_name
        assert not data_name.endswith("_FILE"), data_name
    for container in _all_containers(list(docs)):
        mounts = [m["mountPath"] for m in container.get("volumeMounts", [])]
        for variable in container.get("env", []):
            name = variable["name"]
            assert name in KNOWN_NAMES, name
            assert name not in SECRET_NAMES, f"{name}: mount it and set {name}_FILE"
            assert "valueFrom" not in variable, f"{name}: secrets are mounted as files"
            if name.endswith("_FILE"):
                assert any(variable["value"].startswith(m + "/") for m in mounts), name
    for secret in (d for d in docs if d["kind"] == "Secret"):
        pytest.fail(f"a Secret with values is committed: {secret['metadata']['name']}")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_account_and_webhook_ingress(overlay: str) -> None:
    docs = render(overlay)
    assert of_kind(docs, "ServiceAccount")["civicline"]["automountServiceAccountToken"] is False
    (webhook,) = of_kind(docs, "Ingress").values()
    paths = [p for rule in webhook["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [(p["path"], p["backend"]["service"]["name"]) for p in paths] == [
        ("/webhook", "ingress")
    ]
    assert webhook["spec"]["tls"]


def test_production_runs_rabbitmq_and_postgres_by_their_operators() -> None:
    docs = render("production")
    (rabbitmq,) = of_kind(docs, "RabbitmqCluster").values()
    assert rabbitmq["apiVersion"] == "rabbitmq.com/v1beta1"
    assert rabbitmq["spec"]["replicas"] == 3
    assert "default_queue_type = quorum" in rabbitmq["spec"]["rabbitmq"]["additionalConfig"]
    (postgres,) = of_kind(docs, "Cluster").values()
    assert postgres["apiVersion"] == "postgresql.cnpg.io/v1"
    assert postgres["spec"]["instances"] == 3
    assert postgres["spec"]["bootstrap"]["initdb"]["owner"] == "civicline_owner"
    roles = {r["name"] for r in postgres["spec"]["managed"]["roles"]}
    assert roles == {"civicline_writer", "civicline_auditor"}
    rules = of_kind(docs, "PrometheusRule")["civicline"]["spec"]["groups"][0]["rules"]
    alerts = {r["alert"] for r in rules}
    for needed in (
        "DeadLetters",
        "QueueGrowing",
        "GraphApiErrors",
        "SenderPaused",
        "AuditLag",
        "NoTreeHeadSigned",
    ):
        assert f"CivicLine{needed}" in alerts
    paused = next(r for r in rules if r["alert"] == "CivicLineSenderPaused")
    assert "civicline_responder_sender_refused_timestamp_seconds" in paused["expr"]
    dashboard = json.loads(
        of_kind(docs, "ConfigMap")["civicline-dashboard"]["data"]["civicline-surge.json"]
    )
    assert len(dashboard["panels"]) >= 6


# --- the image --------------------------------------------------------------------------------


def console_scripts() -> set[str]:
    scripts: set[str] = set()
    for pyproject in [
        REPO / "libs/common/pyproject.toml",
        *REPO.glob("services/*/pyproject.toml"),
        REPO / "tools/simulator/pyproject.toml",
    ]:
        scripts |= set(tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["scripts"])
    return scripts


def test_dockerfile_is_multi_stage_non_root_and_fetches_nothing_by_url() -> None:
    lines = [
        line.strip()
        for line in (DEPLOY / "Dockerfile").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert sum(line.startswith("FROM ") for line in lines) >= 2
    users = [line for line in lines if line.startswith("USER ")]
    assert users
    assert re.fullmatch(r"USER \d+(:\d+)?", users[-1]), users
    assert int(users[-1].split()[1].split(":")[0]) >= 1000
    assert not [line for line in lines if re.match(r"ADD\s+(\S+\s+)*https?://", line)]
    assert not [line for line in lines if line.startswith("ADD ")], "COPY, not ADD"
    assert any("-c constraints.txt" in line for line in lines)
    for line in lines:
        if line.startswith("COPY ") and "--from" not in line:
            for source in line.split()[1:-1]:
                assert (REPO / source).exists(), source
    assert console_scripts() == {
        "civicline-ingress",
        "civicline-router",
        "civicline-responder",
        "civicline-campaign",
        "civicline-audit",
        "civicline-migrate",
        "civicline-dlq",
        "civicline-simulator",
    }


def test_dockerignore_keeps_the_context_to_what_the_image_copies() -> None:
    patterns = (REPO / ".dockerignore").read_text(encoding="utf-8").split()
    assert patterns[patterns.index("**") :][:1] == ["**"], "exclude everything, then allow"
    assert "!constraints.txt" in patterns


# --- compose ----------------------------------------------------------------------------------


def compose() -> Doc:
    loaded = yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def test_compose_runs_everything_healthy_and_in_order() -> None:
    services: dict[str, Doc] = compose()["services"]
    assert {"rabbitmq", "postgres", "migrate", "simulator", *SERVICES} <= set(services)
    assert services["rabbitmq"]["image"].endswith("-management")
    one_shot = {name for name, s in services.items() if s.get("restart") == "no"}
    assert "migrate" in one_shot
    for name, service in services.items():
        if name not in one_shot:
            assert "healthcheck" in service, name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if dependency in one_shot else "service_healthy"
            )
            assert condition == {"condition": expected}, (name, dependency)
    for service_name in SERVICES:
        service = services[service_name]
        assert service["command"] == [f"civicline-{service_name}"]
        assert service["read_only"] is True
        assert service["cap_drop"] == ["ALL"]
        assert "migrate" in service["depends_on"]
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
    used = {" ".join(s.get("command", [])).split(" ")[0] for s in services.values()}
    # The operators' CLIs (campaigns, dead letters) are run by hand, not as services.
    assert console_scripts() - {"civicline-campaign", "civicline-dlq"} <= used


def test_compose_secrets_come_from_files_and_variables_are_settings() -> None:
    spec = compose()
    for secret in spec["secrets"].values():
        assert (DEPLOY / secret["file"]).is_file(), secret
    for name, service in spec["services"].items():
        for variable, value in service.get("environment", {}).items():
            if service.get("image", "").startswith(("rabbitmq", "postgres")):
                continue
            assert variable in KNOWN_NAMES, (name, variable)
            assert variable not in SECRET_NAMES, (name, variable)
            if variable.endswith("_FILE") and value.startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in service["secrets"], (name, variable)


@cache
def compose_schema() -> Doc:
    loaded: Doc = json.loads((SCHEMAS / "compose-spec.json").read_text(encoding="utf-8"))
    return loaded


def test_compose_file_follows_the_compose_specification() -> None:
    assert compose_schema()["x-vendored-from"]["project"] == "compose-spec/compose-spec"
    assert problems(compose(), compose_schema()) == []


def test_the_compose_specification_check_refuses_typos() -> None:
    spec = json.loads(json.dumps(compose()))  # unshare the YAML aliases before changing one
    spec["services"]["router"]["depends_on"]["migrate"] = {"condition": "service_complete"}
    spec["services"]["router"]["healtcheck"] = spec["services"]["router"].pop("healthcheck")
    spec["services"]["router"]["read_only"] = ["yes"]
    assert problems(spec, compose_schema()) == [
        ".services.router: Additional properties are not allowed ('healtcheck' was unexpected)",
        ".services.router.depends_on.migrate.condition: 'service_complete' is not one of "
        "['service_started', 'service_healthy', 'service_completed_successfully']",
        ".services.router.read_only: ['yes'] is not of type 'boolean', 'string'",
    ]


def test_compose_file_is_valid_for_docker_compose() -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run(
            [docker, "compose", "version"], capture_output=True, check=False
        ).returncode
    ):
        pytest.skip(
            "the docker compose plugin is not installed: compose.yaml was checked against the "
            "vendored Compose Specification schema instead"
        )
    result = subprocess.run(
        [docker, "compose", "-f", str(DEPLOY / "compose.yaml"), "config", "--quiet"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_make_up_and_down_use_the_compose_file() -> None:
    makefile = (REPO / "Makefile").read_text(encoding="utf-8")
    assert "COMPOSE := docker compose -f deploy/compose.yaml" in makefile
    assert re.search(r"^up:\n\t\$\(require_docker\)\n\t\$\(COMPOSE\) up", makefile, re.M)
    assert re.search(r"^down:\n\t\$\(require_docker\)\n\t\$\(COMPOSE\) down", makefile, re.M)
    assert "no Docker engine is reachable" in makefile

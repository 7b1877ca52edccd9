"""Vendor the schemas tests/unit/test_deploy.py validates deploy/ against, as data.

Two kinds, both written under deploy/schemas/ with where they came from:

    python scripts/vendor-schemas.py crd UPSTREAM_CRD.yaml --project kedacore/keda \\
        --ref v2.16.1 --path config/crd/bases/keda.sh_scaledobjects.yaml [--version v1alpha1]

writes deploy/schemas/crds/<group>_<Kind>_<version>.json for each served version (or the one
named): the version's openAPIV3Schema and a header (project, ref, upstream path, license). A
Helm chart's copy of a CRD works too: its `{{ ... }}` templating is dropped first.
`--core PATH=TYPE` (repeatable) replaces a subtree that is a copy of a Kubernetes type, such as
`spec.affinity=io.k8s.api.core.v1.Affinity` or `spec.tolerations[]=io.k8s.api.core.v1.Toleration`,
by `{"x-kubernetes-core-type": TYPE}`: the test checks it against that type in the Kubernetes
schemas kubernetes-validate bundles, and the vendored file stays small. `--opaque PATH` keeps
only the type of a part civicline does not use (a backup section, the status): the test refuses
any manifest that sets something there, since it could not check it.

    python scripts/vendor-schemas.py compose compose-spec.json --ref <commit or tag>

writes deploy/schemas/compose-spec.json (from compose-spec/compose-spec, schema/compose-spec.json).

`description` texts are dropped (they are documentation, never a constraint; the CRDs are mostly
prose) and every other keyword is kept as upstream wrote it. Keys are sorted, so a refresh shows
as a readable diff.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "deploy" / "schemas"
# Keywords whose value is a map from names to subschemas (the names are data, never keywords).
SCHEMA_MAPS = {"properties", "patternProperties", "definitions", "$defs", "dependencies"}
SCHEMA_LISTS = {"anyOf", "allOf", "oneOf"}
SCHEMA_ONE = {"items", "additionalProperties", "not", "additionalItems"}


def strip_descriptions(schema: Any) -> Any:
    """The schema without its `description` texts (a property named description is kept)."""
    if not isinstance(schema, dict):
        return schema
    stripped: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "description" and isinstance(value, str):
            continue
        if key in SCHEMA_MAPS and isinstance(value, dict):
            stripped[key] = {name: strip_descriptions(sub) for name, sub in value.items()}
        elif key in SCHEMA_LISTS and isinstance(value, list):
            stripped[key] = [strip_descriptions(sub) for sub in value]
        elif key in SCHEMA_ONE:
            stripped[key] = (
                [strip_descriptions(sub) for sub in value]
                if isinstance(value, list)
                else strip_descriptions(value)
            )
        else:
            stripped[key] = value
    return stripped


def _locate(schema: dict[str, Any], path: str) -> tuple[dict[str, Any], str]:
    """The mapping that holds PATH's subschema and its key there (`a.b[]`: items of b)."""
    holder, key = {"": schema}, ""
    for part in path.split("."):
        holder, key = holder[key]["properties"], part.removesuffix("[]")
        if part.endswith("[]"):
            holder, key = holder[key], "items"
    return holder, key


def replace_subtrees(schema: dict[str, Any], core: dict[str, str], opaque: list[str]) -> None:
    """Core-type copies become {"x-kubernetes-core-type": TYPE}; opaque parts keep their type."""
    for path, type_name in core.items():
        holder, key = _locate(schema, path)
        holder[key] = {"x-kubernetes-core-type": type_name}
    for path in opaque:
        holder, key = _locate(schema, path)
        holder[key] = {"type": holder[key]["type"], "x-vendored-opaque": True}


HELM_DIRECTIVE = re.compile(r"^[ \t]*\{\{.*\}\}[ \t]*\n?", re.MULTILINE)
HELM_VALUE = re.compile(r"\{\{.*?\}\}")


def without_helm_templating(text: str) -> str:
    """A chart's copy of a CRD (kedacore/charts) parses once its {{ }} lines and values go."""
    return HELM_VALUE.sub("helm-value", HELM_DIRECTIVE.sub("", text))


def crd_documents(text: str) -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(without_helm_templating(text)) if isinstance(d, dict)]
    crds = [d for d in docs if d.get("kind") == "CustomResourceDefinition"]
    if not crds:
        raise SystemExit("no CustomResourceDefinition in the file")
    for crd in crds:
        if crd.get("apiVersion") != "apiextensions.k8s.io/v1":
            raise SystemExit(f"{crd['metadata']['name']}: only apiextensions.k8s.io/v1 CRDs")
    return crds


def vendored_crds(
    text: str,
    source: dict[str, Any],
    versions: list[str] | None,
    core: dict[str, str],
    opaque: list[str],
) -> dict[str, dict[str, Any]]:
    """File name -> vendored document, for the served versions of every CRD in `text`."""
    out: dict[str, dict[str, Any]] = {}
    for crd in crd_documents(text):
        spec = crd["spec"]
        group, kind = spec["group"], spec["names"]["kind"]
        annotations = crd["metadata"].get("annotations") or {}
        for version in spec["versions"]:
            name = version["name"]
            if not version.get("served") or (versions and name not in versions):
                continue
            header = dict(source)
            schema = strip_descriptions(version["schema"]["openAPIV3Schema"])
            replace_subtrees(schema, core, opaque)
            if core:
                header["core-types"] = core
            if opaque:
                header["opaque"] = opaque
            for annotation in (
                "operator.prometheus.io/version",
                "controller-gen.kubebuilder.io/version",
            ):
                if annotation in annotations:
                    header[annotation] = str(annotations[annotation])
            out[f"{group}_{kind}_{name}.json"] = {
                "x-vendored-from": header,
                "apiVersion": f"{group}/{name}",
                "kind": kind,
                "openAPIV3Schema": schema,
            }
    if versions and len(out) < len(versions):
        raise SystemExit(f"not every version asked for is served: {versions}")
    return out


def write(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(document, indent=1, sort_keys=True, ensure_ascii=False)
    path.write_text(text + "\n", encoding="utf-8")
    print(f"wrote {path.relative_to(REPO)}")


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    crd = commands.add_parser("crd", help="a CustomResourceDefinition YAML file")
    crd.add_argument("file", type=Path)
    crd.add_argument("--project", required=True, help="upstream repository, owner/name")
    crd.add_argument("--ref", required=True, help="release tag or commit the file is from")
    crd.add_argument("--path", required=True, help="the file's path in that repository")
    crd.add_argument("--license", default="Apache-2.0")
    crd.add_argument("--version", action="append", help="only this served version (repeatable)")
    crd.add_argument("--core", action="append", default=[], metavar="PATH=TYPE")
    crd.add_argument("--opaque", action="append", default=[], metavar="PATH")
    compose = commands.add_parser("compose", help="compose-spec/compose-spec's JSON schema")
    compose.add_argument("file", type=Path)
    compose.add_argument("--ref", required=True, help="release tag or commit the file is from")
    args = parser.parse_args(argv)

    text = args.file.read_text(encoding="utf-8")
    if args.command == "crd":
        source = {
            "project": args.project,
            "ref": args.ref,
            "path": args.path,
            "license": args.license,
        }
        core = dict(entry.split("=", 1) for entry in args.core)
        for name, document in vendored_crds(text, source, args.version, core, args.opaque).items():
            write(SCHEMAS / "crds" / name, document)
    else:
        schema = strip_descriptions(json.loads(text))
        schema["x-vendored-from"] = {
            "project": "compose-spec/compose-spec",
            "ref": args.ref,
            "path": "schema/compose-spec.json",
            "license": "Apache-2.0",
        }
        write(SCHEMAS / "compose-spec.json", schema)


if __name__ == "__main__":
    main(sys.argv[1:])

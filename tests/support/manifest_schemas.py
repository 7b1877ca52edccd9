"""Offline validation of custom resources and the compose file against vendored schemas.

The schemas live in deploy/schemas (see deploy/README.md and scripts/vendor-schemas.py). A CRD's
openAPIV3Schema is a *structural* schema, which the API server applies with rules a plain JSON
Schema validator does not know; `closed_schema` turns one into a JSON Schema (2020-12) that
applies them the way a typo should be caught:

- an object with `properties` accepts no other field, unless it says
  `x-kubernetes-preserve-unknown-fields` or has its own `additionalProperties` (the API server
  would silently prune the unknown field, which is how a misspelt setting gets lost);
- `x-kubernetes-int-or-string` accepts an integer or a string, `nullable` accepts null;
- `x-kubernetes-embedded-resource` also accepts apiVersion, kind and metadata;
- `metadata` at the root is checked as an ObjectMeta, and a subtree vendored as
  `{"x-kubernetes-core-type": NAME}` as that Kubernetes type, both from the strict Kubernetes
  schemas kubernetes-validate bundles;
- a subtree vendored `x-vendored-opaque` (a part civicline does not use, kept small) accepts
  nothing: what cannot be checked may not be set;
- `anyOf`/`allOf`/`oneOf`/`not` only validate values (structural schemas may not declare fields
  there), so they are not closed. CEL rules (`x-kubernetes-validations`) are not evaluated.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import jsonschema
from jsonschema.exceptions import ValidationError
from referencing import Registry, Resource

Schema = dict[str, Any]
CORE_DEFINITIONS = "https://kubernetes.io/api/_definitions.json"
OBJECT_META = "io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
KUBERNETES_SCHEMAS = "kubernetes-json-schema/v1.32.0-local-strict"
JUNCTORS = ("anyOf", "allOf", "oneOf")


def core_ref(name: str) -> Schema:
    return {"$ref": f"{CORE_DEFINITIONS}#/$defs/{name}"}


def closed_schema(schema: Mapping[str, Any], *, in_junctor: bool = False) -> Schema:
    """The JSON Schema that checks a structural CRD schema, unknown fields refused."""
    if "x-kubernetes-core-type" in schema:
        return core_ref(schema["x-kubernetes-core-type"])
    if schema.get("x-vendored-opaque"):
        return {"not": {}, "x-vendored-opaque": True}  # unchecked, so nothing may be set there
    out: Schema = {}
    for key, value in schema.items():
        if key == "properties":
            out[key] = {name: closed_schema(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = closed_schema(value)
        elif key in JUNCTORS:
            out[key] = [closed_schema(sub, in_junctor=True) for sub in value]
        elif key == "not":
            out[key] = closed_schema(value, in_junctor=True)
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            if value and bound in schema:
                out[key] = schema[bound]
        elif key in ("minimum", "maximum") and schema.get(f"exclusive{key.title()}") is True:
            continue  # became exclusiveMinimum/exclusiveMaximum above
        elif key != "nullable":
            out[key] = value
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    if schema.get("x-kubernetes-int-or-string") is True and not any(j in out for j in JUNCTORS):
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if schema.get("x-kubernetes-embedded-resource") is True:
        properties = out.setdefault("properties", {})
        properties.setdefault("apiVersion", {"type": "string"})
        properties.setdefault("kind", {"type": "string"})
        properties.setdefault("metadata", core_ref(OBJECT_META))
    closable = "properties" in out and "additionalProperties" not in out
    if closable and not in_junctor and not schema.get("x-kubernetes-preserve-unknown-fields"):
        out["additionalProperties"] = False
    return out


def resource_schema(openapi_v3_schema: Mapping[str, Any]) -> Schema:
    """The schema a whole custom resource is checked with (metadata as an ObjectMeta)."""
    schema = closed_schema(openapi_v3_schema)
    schema.setdefault("properties", {})["metadata"] = core_ref(OBJECT_META)
    schema["additionalProperties"] = False
    schema["required"] = sorted({*schema.get("required", []), "apiVersion", "kind", "metadata"})
    return schema


@cache
def _core_registry() -> Registry[Any]:
    text = files("kubernetes_validate").joinpath(f"{KUBERNETES_SCHEMAS}/_definitions.json")
    definitions = Resource.from_contents(json.loads(text.read_text(encoding="utf-8")))
    return definitions @ Registry()


def _where(error: ValidationError) -> str:
    where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in error.absolute_path)
    return where or "(the document)"


def problems(document: Mapping[str, Any], schema: Schema) -> list[str]:
    """Readable problems of `document` against `schema`, sorted by place; [] when valid."""
    validator_class = jsonschema.validators.validator_for(
        schema, default=jsonschema.Draft202012Validator
    )
    validator = validator_class(schema, registry=_core_registry())
    errors = [_specific(error) for error in validator.iter_errors(document)]
    errors.sort(key=lambda e: list(map(str, e.absolute_path)))
    return [f"{_where(error)}: {_message(error)}" for error in errors]


def _specific(error: ValidationError) -> ValidationError:
    """For a failed oneOf/anyOf, the branch's error that points deepest, if one points deeper:
    the branch that matched the shape of the value and failed inside it."""
    while error.context:
        deepest = max(error.context, key=lambda e: len(e.relative_path))
        if not deepest.relative_path:
            break
        error = deepest
    return error


def _message(error: ValidationError) -> str:
    schema = error.schema if isinstance(error.schema, dict) else {}
    if schema.get("x-vendored-opaque"):
        return (
            "this part of the CRD was vendored opaque (scripts/vendor-schemas.py --opaque), "
            "so it cannot be checked: vendor it in full before setting it"
        )
    if error.validator == "additionalProperties" and isinstance(error.instance, dict):
        # The same words whether or not the schema also has patternProperties (compose's x-).
        known, patterns = schema.get("properties", {}), schema.get("patternProperties", {})
        extra = [
            repr(name)
            for name in error.instance
            if name not in known and not any(re.search(p, name) for p in patterns)
        ]
        if extra:
            verb = "was" if len(extra) == 1 else "were"
            return f"Additional properties are not allowed ({', '.join(extra)} {verb} unexpected)"
    return error.message


# --- the vendored files ------------------------------------------------------------------------


def load_crd_schemas(directory: Path) -> dict[tuple[str, str], Schema]:
    """(apiVersion, kind) -> vendored CRD document, from deploy/schemas/crds/*.json."""
    found: dict[tuple[str, str], Schema] = {}
    for path in sorted(directory.glob("*.json")):
        vendored = json.loads(path.read_text(encoding="utf-8"))
        found[(vendored["apiVersion"], vendored["kind"])] = vendored
    return found


def custom_resource_problems(
    document: Mapping[str, Any], vendored: Mapping[tuple[str, str], Schema]
) -> list[str]:
    """Why `document` would not be accepted by its CRD; a kind with no vendored CRD is one."""
    key = (document.get("apiVersion", ""), document.get("kind", ""))
    if key not in vendored:
        return [
            f"no vendored CRD schema for {key[0]} {key[1]}: vendor it with "
            "scripts/vendor-schemas.py crd (see deploy/README.md)"
        ]
    return problems(document, resource_schema(vendored[key]["openAPIV3Schema"]))

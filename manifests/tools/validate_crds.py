#!/usr/bin/env python3
"""Validates custom resources against their CustomResourceDefinitions, offline.

Usage: validate_crds.py [--strict] --crds CRDS.yaml [--crds ...] OBJECTS.yaml...

Every document of every OBJECTS file ("-" reads standard input) is checked against the
openAPIV3Schema of its apiVersion's served version in the CRDs, as the API server would check
it, minus CEL rules (x-kubernetes-validations are not evaluated). The Kubernetes extensions
become JSON Schema: x-kubernetes-int-or-string accepts an integer or a string, nullable adds
null, x-kubernetes-preserve-unknown-fields keeps unknown fields. metadata is checked as
ObjectMeta (names, string labels and annotations).

--strict rejects unknown fields (additionalProperties: false wherever a schema lists
properties and does not preserve unknown fields), as the API server's strict field validation
does.

Prints one line per error and exits 1 when an object is invalid or has no CRD; prints a
summary and exits 0 otherwise.
"""

import argparse
import copy
import sys

import jsonschema
import yaml

# libyaml's loader when PyYAML has it: the CRD files are large.
LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}

OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 253},
        "generateName": {"type": "string"},
        "namespace": {"type": "string", "minLength": 1, "maxLength": 63},
        "labels": STRING_MAP,
        "annotations": STRING_MAP,
        "finalizers": {"type": "array", "items": {"type": "string"}},
        "ownerReferences": {"type": "array", "items": {"type": "object"}},
        "uid": {"type": "string"},
        "resourceVersion": {"type": "string"},
        "generation": {"type": "integer"},
        "creationTimestamp": {"type": ["string", "null"]},
    },
}


def to_json_schema(schema, strict):
    """The JSON Schema (draft 4, as OpenAPI 3.0) of a structural CRD schema."""
    if isinstance(schema, list):
        return [to_json_schema(s, strict) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties", "definitions"):
            out[key] = {k: to_json_schema(v, strict) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = to_json_schema(value, strict)
        else:
            out[key] = value
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out.setdefault("anyOf", [{"type": "integer"}, {"type": "string"}])
    if out.pop("nullable", False) and "type" in out:
        out["type"] = [out["type"], "null"]
    preserve = out.pop("x-kubernetes-preserve-unknown-fields", False)
    if strict and "properties" in out and "additionalProperties" not in out and not preserve:
        out["additionalProperties"] = False
    return out


def load_crds(paths, strict):
    """(group/version, kind) -> validator for every served version of every CRD."""
    validators = {}
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for crd in yaml.load_all(f, Loader=LOADER):
                if not crd or crd.get("kind") != "CustomResourceDefinition":
                    continue
                spec = crd["spec"]
                for version in spec["versions"]:
                    if not version.get("served", False):
                        continue
                    schema = to_json_schema(copy.deepcopy(version["schema"]["openAPIV3Schema"]), strict)
                    properties = schema.setdefault("properties", {})
                    properties["apiVersion"] = {"type": "string"}
                    properties["kind"] = {"type": "string"}
                    properties["metadata"] = OBJECT_META
                    schema.setdefault("required", [])
                    for field in ("apiVersion", "kind", "metadata"):
                        if field not in schema["required"]:
                            schema["required"].append(field)
                    jsonschema.Draft4Validator.check_schema(schema)
                    api_version = f"{spec['group']}/{version['name']}"
                    validators[(api_version, spec["names"]["kind"])] = jsonschema.Draft4Validator(schema)
    return validators


def documents(path):
    if path == "-":
        return list(yaml.load_all(sys.stdin, Loader=LOADER))
    with open(path, encoding="utf-8") as f:
        return list(yaml.load_all(f, Loader=LOADER))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crds", action="append", required=True, help="a YAML file of CRDs")
    parser.add_argument("--strict", action="store_true", help="reject unknown fields")
    parser.add_argument("objects", nargs="+", help="YAML files of objects to validate")
    args = parser.parse_args()

    validators = load_crds(args.crds, args.strict)
    failures = 0
    checked = 0
    for path in args.objects:
        for obj in documents(path):
            if obj is None:
                continue
            checked += 1
            if not isinstance(obj, dict):
                print(f"ERROR {path}: a document is not an object")
                failures += 1
                continue
            kind = obj.get("kind")
            name = (obj.get("metadata") or {}).get("name", "?")
            validator = validators.get((obj.get("apiVersion"), kind))
            if validator is None:
                print(f"ERROR {path} {kind}/{name}: no CRD serves {obj.get('apiVersion')} {kind}")
                failures += 1
                continue
            errors = sorted(validator.iter_errors(obj), key=lambda e: list(e.absolute_path))
            for e in errors:
                where = ".".join(str(p) for p in e.absolute_path) or "(root)"
                print(f"ERROR {path} {kind}/{name}: {where}: {e.message}")
            if errors:
                failures += 1
    if failures:
        print(f"{failures} of {checked} objects invalid")
        return 1
    print(f"{checked} objects valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())

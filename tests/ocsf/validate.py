#!/usr/bin/env python3
"""Validate OCSF events (one JSON object per line) with third-party OCSF packages.

    validate.py [--version 1.7.0] [--require-class UID]... FILE.jsonl

Each event is checked twice, by packages that are not ours (tests/ocsf/requirements.txt):

1. JSON Schema: `ocsf-json-schema` generates, from the official OCSF schema export of
   that version, the draft 2020-12 JSON Schema of the event's class with the profiles
   the event declares in `metadata.profiles`, every referenced object embedded; the
   `jsonschema` package checks the event against it. That schema is strict: unknown
   attributes (at any depth, except inside `unmapped` and other free-form objects),
   missing required attributes, wrong types, values outside an enum (`*_id`,
   `class_uid`, `category_uid`, `type_uid`), patterns (ip_t, ...), ranges (port_t) and
   the `at_least_one` / `just_one` constraints all fail. `null` is never a valid value.
2. pydantic: the `pydantic-ocsf` model of the class (`ocsf.v1_7_0.events.ProcessActivity`,
   ...) must accept it: required attributes, and cross-field rules the JSON Schema cannot
   express (`type_uid` == `class_uid` * 100 + `activity_id`, each `*_id` consistent with
   its caption, e.g. `activity_id` 1 with `activity_name` "Launch").

pydantic-ocsf builds its models lazily into one shared namespace, where the nested enums
of different classes share names (`StatusId` of Detection Finding and of Network
Activity): once a second class is built, the first one's forward references can resolve
to the other's enum. So each class's events are checked by its model in a child process
of their own (forked before any event model is built).

On top: `metadata.version` must be the version validated against, and every profile in
`metadata.profiles` must be one the class allows.

Prints one line per class (count of events, of failures), then each failure; exits 1
when any event fails, when the file has no event, or when a `--require-class` is absent.
"""

from __future__ import annotations

import argparse
import copy
import importlib
import json
import os
import sys
from collections import Counter
from typing import Any

import jsonschema
import pydantic
from ocsf_json_schema import OcsfJsonSchemaEmbedded, get_ocsf_schema

DEFAULT_VERSION = "1.7.0"
MAX_ERRORS_PER_EVENT = 20


class Validator:
    def __init__(self, version: str) -> None:
        self.version = version
        self.raw = get_ocsf_schema(version=version)
        self.schema = OcsfJsonSchemaEmbedded(self.raw)
        self.validators: dict[tuple[str, tuple[str, ...]], Any] = {}
        self.models: dict[str, Any] = {}
        # pydantic-ocsf builds its models on first use (JIT), from its own copy of the schema.
        self.version_module = importlib.import_module("ocsf.v" + version.replace(".", "_"))

    def class_name(self, class_uid: int) -> str:
        if class_uid == 0:
            return "base_event"
        return self.schema.lookup_class_name_from_uid(class_uid)

    def class_def(self, name: str) -> dict:
        if name == "base_event":
            return self.raw["base_event"]
        return self.raw["classes"][name]

    def json_validator(self, name: str, profiles: tuple[str, ...]):
        key = (name, profiles)
        if key not in self.validators:
            schema = self.schema.get_class_schema(name, list(profiles))
            cls = jsonschema.validators.validator_for(schema)
            cls.check_schema(schema)
            self.validators[key] = cls(schema)
        return self.validators[key]

    def model(self, name: str):
        if name not in self.models:
            camel = "".join(part.capitalize() for part in name.split("_"))
            model = getattr(self.version_module.events, camel)
            if not model.__pydantic_complete__:
                # Forward references to objects loaded after it: resolve them now.
                self.version_module.rebuild_all()
            if not model.__pydantic_complete__:
                raise RuntimeError(f"pydantic-ocsf model {camel} cannot be completed")
            self.models[name] = model
        return self.models[name]

    def check(self, event: Any) -> tuple[int | None, str, list[str]]:
        """Returns (class_uid, class caption, errors) of one event."""
        if not isinstance(event, dict):
            return None, "?", ["not a JSON object"]
        class_uid = event.get("class_uid")
        if not isinstance(class_uid, int) or isinstance(class_uid, bool):
            return None, "?", [f"class_uid is not an integer: {class_uid!r}"]
        try:
            name = self.class_name(class_uid)
        except ValueError as e:
            return class_uid, "?", [str(e)]
        definition = self.class_def(name)
        caption = definition.get("caption", name)
        errors: list[str] = []

        metadata = event.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        if metadata.get("version") != self.version:
            errors.append(
                f"metadata.version is {metadata.get('version')!r}, validating against "
                f"{self.version!r}"
            )
        profiles = metadata.get("profiles", [])
        if not isinstance(profiles, list) or not all(isinstance(p, str) for p in profiles):
            errors.append(f"metadata.profiles is not a list of strings: {profiles!r}")
            profiles = []
        allowed = set(definition.get("profiles") or [])
        for p in profiles:
            if p not in allowed:
                errors.append(f"profile {p!r} is not one of class {name}'s: {sorted(allowed)}")
        profiles_key = tuple(sorted(p for p in set(profiles) if p in allowed))

        validator = self.json_validator(name, profiles_key)
        found = sorted(validator.iter_errors(event), key=lambda e: list(e.absolute_path))
        for err in found[:MAX_ERRORS_PER_EVENT]:
            path = "/".join(str(p) for p in err.absolute_path) or "(top)"
            errors.append(f"[jsonschema] {path}: {err.message[:400]}")
        if len(found) > MAX_ERRORS_PER_EVENT:
            errors.append(f"[jsonschema] ... {len(found) - MAX_ERRORS_PER_EVENT} more")

        return class_uid, caption, errors

    def model_errors(self, name: str, event: dict) -> list[str]:
        """What the pydantic-ocsf model of class `name` refuses in `event`."""
        errors: list[str] = []
        try:
            # The models' validators fill fields in: give them a copy.
            self.model(name).model_validate(copy.deepcopy(event))
        except pydantic.ValidationError as e:
            for err in e.errors()[:MAX_ERRORS_PER_EVENT]:
                path = "/".join(str(p) for p in err.get("loc", ())) or "(top)"
                errors.append(f"[pydantic] {path}: {err.get('msg', '')[:400]}")
        return errors

    def model_errors_apart(self, name: str, events: list[dict]) -> list[list[str]]:
        """`model_errors` of each event, in a forked child that builds only this class's
        model (see the module doc), so no other class's enums can leak into it."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            try:
                out = [self.model_errors(name, e) for e in events]
            except Exception as e:  # noqa: BLE001 - reported as every event's error
                out = [[f"[pydantic] model of {name}: {e}"]] * len(events)
            with os.fdopen(write, "w", encoding="utf-8") as f:
                json.dump(out, f)
            os._exit(0)
        os.close(write)
        with os.fdopen(read, encoding="utf-8") as f:
            data = f.read()
        os.waitpid(pid, 0)
        try:
            out = json.loads(data)
        except json.JSONDecodeError:
            out = None
        if not isinstance(out, list) or len(out) != len(events):
            return [[f"[pydantic] the check of class {name} died"]] * len(events)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("file", help="JSON lines, one OCSF event per line")
    parser.add_argument(
        "--version",
        default=DEFAULT_VERSION,
        help=f"OCSF schema version to validate against (default {DEFAULT_VERSION})",
    )
    parser.add_argument(
        "--require-class",
        type=int,
        action="append",
        default=[],
        metavar="UID",
        help="fail unless at least one event of this class_uid is in the file (repeatable)",
    )
    args = parser.parse_args()

    validator = Validator(args.version)
    counts: Counter[int | None] = Counter()
    failed: Counter[int | None] = Counter()
    captions: dict[int | None, str] = {}
    failures: list[str] = []
    checked: list[tuple[int, Any, int | None, list[str]]] = []
    by_class: dict[str, list[int]] = {}
    total = 0
    with open(args.file, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            total += 1
            try:
                event = json.loads(line)
            except json.JSONDecodeError as e:
                counts[None] += 1
                failed[None] += 1
                failures.append(f"line {number}: not JSON: {e}")
                continue
            class_uid, caption, errors = validator.check(event)
            counts[class_uid] += 1
            captions.setdefault(class_uid, caption)
            checked.append((number, event, class_uid, errors))
            if caption != "?" and isinstance(class_uid, int):
                by_class.setdefault(validator.class_name(class_uid), []).append(len(checked) - 1)

    for name, indexes in by_class.items():
        more = validator.model_errors_apart(name, [checked[i][1] for i in indexes])
        for i, errors in zip(indexes, more):
            checked[i][3].extend(errors)

    for number, event, class_uid, errors in checked:
        if errors:
            failed[class_uid] += 1
            code = ""
            if isinstance(event, dict) and isinstance(event.get("metadata"), dict):
                code = f" {event['metadata'].get('event_code', '')}"
            failures.append(
                f"line {number} (class {class_uid}{code}):\n    " + "\n    ".join(errors)
            )

    print(f"OCSF {args.version}: {total} events in {args.file}")
    for class_uid in sorted(counts, key=lambda c: -1 if c is None else c):
        print(
            f"  class {class_uid} ({captions.get(class_uid, '?')}): "
            f"{counts[class_uid]} events, {failed[class_uid]} invalid"
        )
    problems = list(failures)
    if total == 0:
        problems.append("the file has no event")
    for uid in args.require_class:
        if counts[uid] == 0:
            problems.append(f"no event of class {uid}")
    for problem in problems:
        print(f"FAIL {problem}")
    if problems:
        print(f"ocsf validation: {sum(failed.values())} of {total} events invalid")
        return 1
    print(f"ocsf validation: all {total} events valid")
    return 0


if __name__ == "__main__":
    sys.exit(main())

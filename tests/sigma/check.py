#!/usr/bin/env python3
"""Checks a Sigma rule pack with third-party tooling (pinned in
tests/sigma/requirements.txt): sigma-cli's `sigma check` (every validator but
the two that download MITRE data: the test machine is offline), then converts
every rule with the Splunk and the Elasticsearch (Lucene, ES|QL) pySigma
backends through the agent-sensor pipeline, and requires each rule to give
a query that names its event kind; each correlation rule is converted with
the rules it names (Splunk, ES|QL: the backends that convert correlations).

usage: check.py RULES_DIR PIPELINE
Exit 0 when everything passes; 1 with the tools' output otherwise.
"""

import argparse
import pathlib
import shutil
import subprocess
import sys
import tempfile

import yaml  # (imported first: a broken venv fails at --help)
from sigma.backends.elasticsearch import LuceneBackend  # noqa: F401
from sigma.backends.splunk import SplunkBackend  # noqa: F401
from sigma.collection import SigmaCollection
from sigma.processing.resolver import ProcessingPipelineResolver  # noqa: F401


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rules", type=pathlib.Path)
    parser.add_argument("pipeline", type=pathlib.Path)
    args = parser.parse_args()
    sigma = pathlib.Path(sys.executable).parent / "sigma"
    failed = False

    check = subprocess.run(
        [str(sigma), "check", "--fail-on-error", "--fail-on-issues",
         "-x", "attacktag", "-x", "d3_fendtag", str(args.rules)],
        capture_output=True, text=True, timeout=300)
    print(check.stdout + check.stderr)
    if check.returncode != 0:
        print(f"FAIL: sigma check exited {check.returncode}")
        failed = True

    files = sorted(args.rules.glob("*.yml"))
    plain, correlations = [], []
    for f in files:
        doc = yaml.safe_load(f.read_text())
        (correlations if "correlation" in doc else plain).append((f, doc))

    def convert(target, paths):
        out = subprocess.run(
            [str(sigma), "convert", "-t", target, "-p", str(args.pipeline)]
            + [str(p) for p in paths],
            capture_output=True, text=True, timeout=300)
        return out.returncode, out.stdout.strip(), out.stderr

    # Each rule alone: one query that names its kind.
    for target in ("splunk", "lucene", "esql"):
        for f, _ in plain:
            code, query, err = convert(target, [f])
            ok = code == 0 and query != "" and "kind" in query
            print(f"{'ok  ' if ok else 'FAIL'} {target:7} {f.name}: {' '.join(query.split())}")
            if not ok:
                print(err)
                failed = True
    # Each correlation with the rules it names (backends that convert
    # correlations: Splunk, Elasticsearch ES|QL).
    for target in ("splunk", "esql"):
        for f, doc in correlations:
            names = set(doc["correlation"]["rules"])
            word = doc["correlation"]["type"]
            bases = [p for p, d in plain if d.get("name") in names or d.get("id") in names]
            # One directory: sigma-cli resolves names within one input.
            with tempfile.TemporaryDirectory() as tmp:
                for b in bases + [f]:
                    shutil.copy(b, tmp)
                code, query, err = convert(target, [tmp])
            # The base rules' own queries come too: keep the correlation's.
            query = query.split("\n\n")
            query = next((q for q in query if word in q), "")
            ok = code == 0 and len(bases) == len(names) and word in query
            print(f"{'ok  ' if ok else 'FAIL'} {target:7} {f.name}: {' '.join(query.split())}")
            if not ok:
                print(err)
                failed = True
    print(f"{len(files)} rules, {'FAILED' if failed else 'all passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

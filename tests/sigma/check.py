#!/usr/bin/env python3
"""Checks a Sigma rule pack with third-party tooling (pinned in
tests/sigma/requirements.txt): sigma-cli's `sigma check` (every validator but
the two that download MITRE data: the test machine is offline), then converts
every rule with the Splunk and the Elasticsearch (Lucene) pySigma backends
through the agent-sensor pipeline, and requires each rule to give one query
that names its event kind.

usage: check.py RULES_DIR PIPELINE
Exit 0 when everything passes; 1 with the tools' output otherwise.
"""

import argparse
import pathlib
import subprocess
import sys

import yaml  # noqa: F401  (imported first: a broken venv fails at --help)
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
    kinds = {}
    for f in files:
        rule = SigmaCollection.from_yaml(f.read_text()).rules[0]
        kinds[f.name] = rule.logsource.category
    for target in ("splunk", "lucene"):
        for f in files:
            out = subprocess.run(
                [str(sigma), "convert", "-t", target, "-p", str(args.pipeline), str(f)],
                capture_output=True, text=True, timeout=300)
            # One rule, one query (Splunk writes a regex as a second
            # `| regex` line of the same query).
            query = out.stdout.strip()
            ok = out.returncode == 0 and query != "" and "kind" in query
            shown = " ".join(query.split())
            print(f"{'ok  ' if ok else 'FAIL'} {target:7} {f.name}: {shown}")
            if not ok:
                print(out.stderr)
                failed = True
    print(f"{len(files)} rules, {'FAILED' if failed else 'all passed'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Verify a sensor provenance bundle's DSSE envelope with securesystemslib.

Usage: verify.py --keys JWKS BUNDLE
Prints "VERIFIED <keyid>" and exits 0, or "REJECTED <why>" and exits 1.
"""
import argparse
import base64
import json
import sys

from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey


def b64url(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--keys", required=True, help="a JWKS of Ed25519 keys (OKP)")
    p.add_argument("bundle")
    a = p.parse_args()
    with open(a.keys) as f:
        jwks = json.load(f)
    jwks = jwks.get("jwks", jwks)
    keys = [
        SSlibKey(k["kid"], "ed25519", "ed25519", {"public": b64url(k["x"]).hex()})
        for k in jwks["keys"]
        if k.get("kty") == "OKP" and k.get("crv") == "Ed25519"
    ]
    try:
        with open(a.bundle) as f:
            envelope = Envelope.from_dict(json.load(f))
        if envelope.payload_type != "application/vnd.in-toto+json":
            raise ValueError("payload type " + envelope.payload_type)
        verified = envelope.verify(keys, 1)
        statement = json.loads(envelope.payload)
        if statement.get("_type") != "https://in-toto.io/Statement/v1":
            raise ValueError("not an in-toto v1 Statement")
    except Exception as e:  # noqa: BLE001 - every failure is a rejection
        print("REJECTED %s: %s" % (type(e).__name__, e))
        return 1
    print("VERIFIED " + " ".join(sorted(verified)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Verify a run token the way a credential broker would, with PyJWT (not our code).

    verify.py --discovery URL --aud AUDIENCE TOKEN

Fetches the OpenID discovery document at URL, takes its `issuer` and
`jwks_uri`, lets PyJWT's PyJWKClient fetch the JWKS and pick the key named by
the token's `kid`, then checks the signature (EdDSA), `exp`, `nbf`, `iat`,
the issuer and the audience. Prints the claims as one JSON object and exits
0 when the token verifies; prints `REJECTED <exception class>: <message>`
and exits 1 when it does not.
"""

import argparse
import json
import sys
import urllib.request

import jwt
from jwt import PyJWKClient


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--discovery", required=True, help="URL of .well-known/openid-configuration")
    ap.add_argument("--aud", required=True, help="the audience the token must be for")
    ap.add_argument("token")
    args = ap.parse_args()
    with urllib.request.urlopen(args.discovery, timeout=10) as r:
        discovery = json.load(r)
    client = PyJWKClient(discovery["jwks_uri"], cache_keys=False)
    try:
        key = client.get_signing_key_from_jwt(args.token)
        claims = jwt.decode(
            args.token,
            key.key,
            algorithms=discovery.get("id_token_signing_alg_values_supported", ["EdDSA"]),
            audience=args.aud,
            issuer=discovery["issuer"],
            options={"require": ["exp", "iat", "nbf", "iss", "sub", "aud", "jti"]},
        )
    except Exception as e:  # noqa: BLE001 - every rejection is an answer
        print(f"REJECTED {type(e).__name__}: {e}")
        return 1
    print(json.dumps(claims, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())

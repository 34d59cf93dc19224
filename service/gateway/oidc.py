"""OpenID Connect bearer tokens (SYNTH_OIDC_ISSUER): a JWT counts when its signature
checks against a key of the issuer's JWKS (fetched by PyJWT's PyJWKClient and cached),
its `iss` is the issuer, it has not expired, and its `aud` is SYNTH_OIDC_AUDIENCE when
that is set. Its scopes are the claim SYNTH_OIDC_SCOPES_CLAIM (a space-separated string
or a list; a dotted path reaches nested claims such as Keycloak's `realm_access.roles`).
Only asymmetric algorithms are accepted: never `none`, never a shared secret."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request

import jwt
from jwt import PyJWKClient

from dicom_synth.settings import Settings
from service.tokens import Principal, granted

log = logging.getLogger(__name__)

ALGORITHMS = ["RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"]
_lock = threading.Lock()
_clients: dict[str, PyJWKClient] = {}
_jwks_urls: dict[str, str] = {}


def _jwks_url(settings: Settings) -> str:
    if settings.oidc_jwks_url:
        return settings.oidc_jwks_url
    issuer = str(settings.oidc_issuer).rstrip("/")
    with _lock:
        known = _jwks_urls.get(issuer)
    if known:
        return known
    with urllib.request.urlopen(f"{issuer}/.well-known/openid-configuration", timeout=10) as rsp:
        url = str(json.load(rsp)["jwks_uri"])
    with _lock:
        _jwks_urls[issuer] = url
    return url


def _client(url: str) -> PyJWKClient:
    with _lock:
        if url not in _clients:
            _clients[url] = PyJWKClient(url, cache_keys=True, lifespan=300, timeout=10)
        return _clients[url]


def _claim(claims: dict, path: str) -> object:
    value: object = claims
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def verify_jwt(settings: Settings, token: str) -> Principal | None:
    if token.count(".") != 2:
        return None  # not a JWT: an unknown opaque token
    try:
        key = _client(_jwks_url(settings)).get_signing_key_from_jwt(token)
        claims = jwt.decode(
            token, key.key, algorithms=ALGORITHMS, issuer=settings.oidc_issuer,
            audience=settings.oidc_audience,
            options={"require": ["exp", "iss"], "verify_aud": settings.oidc_audience is not None},
        )
    except (jwt.PyJWTError, OSError, ValueError, KeyError) as exc:
        log.warning("bearer JWT refused: %s: %s", type(exc).__name__, exc)
        return None
    return Principal(f"oidc:{claims.get('sub', '?')}", granted(_claim(claims, settings.oidc_scopes_claim)))

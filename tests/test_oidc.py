"""OpenID Connect JWTs (issue 17) against a real issuer served over loopback HTTP: its
discovery document and JWKS, RS256 keys made here. The gateway runs in-process."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi.testclient import TestClient
from jwt.algorithms import RSAAlgorithm

from dicom_synth.settings import Settings, get_settings
from service.gateway.main import create_app


class Issuer:
    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        self.jwks = {"keys": [{**jwk, "kid": "k1", "use": "sig", "alg": "RS256"}]}
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                path = self.path.removeprefix("/realms/test")
                if path == "/.well-known/openid-configuration":
                    body = {"issuer": issuer.url, "jwks_uri": issuer.url + "/jwks"}
                elif path == "/jwks":
                    body = issuer.jwks
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/realms/test"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def token(self, key=None, alg: str = "RS256", **claims) -> str:
        body = {"iss": self.url, "sub": "user-1", "aud": "dicom-synth", "exp": int(time.time()) + 300, **claims}
        return jwt.encode({k: v for k, v in body.items() if v is not None}, key or self.key, algorithm=alg,
                          headers={"kid": "k1"})


@pytest.fixture
def issuer():
    it = Issuer()
    yield it
    it.server.shutdown()


def _client(tmp_path: Path, issuer: Issuer, **kw) -> TestClient:
    settings = Settings(data_dir=tmp_path / "data", broker_url="redis://127.0.0.1:1/0",
                        oidc_issuer=issuer.url, oidc_audience="dicom-synth", **kw)
    app = create_app()
    app.dependency_overrides[get_settings] = lambda: settings
    return TestClient(app)


def _hs256(secret: bytes, claims: dict) -> str:
    """The algorithm-confusion forgery: an HMAC "signed" with the issuer's public key."""
    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = {"alg": "HS256", "typ": "JWT", "kid": "k1"}
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(claims).encode())
    return head + "." + b64(hmac.new(secret, head.encode(), hashlib.sha256).digest())


def _as(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_jwt_scopes_from_the_scope_claim(tmp_path: Path, issuer: Issuer) -> None:
    with _client(tmp_path, issuer) as client:
        reader = _as(issuer.token(scope="openid read"))
        assert client.get("/jobs", headers=reader).status_code == 200
        assert client.post("/synthesize", headers=reader).status_code == 403
        admin = _as(issuer.token(scope="admin"))
        assert client.post("/jobs/nojob/resend", headers=admin).status_code == 404


def test_bad_jwts_are_401(tmp_path: Path, issuer: Issuer) -> None:
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = issuer.key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    bad = {
        "expired": issuer.token(scope="admin", exp=int(time.time()) - 60),
        "other issuer": issuer.token(scope="admin", iss="http://127.0.0.1:1/evil"),
        "other audience": issuer.token(scope="admin", aud="another-app"),
        "no exp": issuer.token(scope="admin", exp=None),
        "forged signature": issuer.token(key=other_key, scope="admin"),
        "HS256 with the public key": _hs256(public_pem, {"iss": issuer.url, "aud": "dicom-synth",
                                                        "exp": int(time.time()) + 300, "scope": "admin"}),
        "alg none": jwt.encode({"iss": issuer.url, "aud": "dicom-synth", "exp": int(time.time()) + 300,
                                "scope": "admin"}, None, algorithm="none", headers={"kid": "k1"}),
    }
    with _client(tmp_path, issuer) as client:
        for why, token in bad.items():
            assert client.get("/jobs", headers=_as(token)).status_code == 401, why
        assert client.get("/jobs", headers=_as(issuer.token(scope="read"))).status_code == 200


def test_nested_roles_claim(tmp_path: Path, issuer: Issuer) -> None:
    with _client(tmp_path, issuer, oidc_scopes_claim="realm_access.roles") as client:
        token = issuer.token(realm_access={"roles": ["submit", "offline_access"]})
        assert client.get("/jobs", headers=_as(token)).status_code == 403
        assert client.post("/synthesize", headers=_as(token)).status_code not in (401, 403)

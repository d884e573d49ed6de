"""The client side of PostgreSQL authentication, sans-IO.

Branch sessions log in upstream as their branch role with a password the proxy keeps
in the catalog (docs/branches.md), so the proxy must answer whatever the upstream asks:
trust, cleartext, md5 or SCRAM-SHA-256 (RFC 5802 / RFC 7677, as PostgreSQL implements
it: https://www.postgresql.org/docs/current/sasl-authentication.html).

`UpstreamLogin.respond(code, data)` takes one Authentication* request and returns the
bytes to send back (a PasswordMessage / SASLInitialResponse / SASLResponse) or b"".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import struct
import unicodedata

from cowproxy.protocol.errors import ProtocolViolation
from cowproxy.protocol.messages import (
    AUTH_CLEARTEXT,
    AUTH_MD5,
    AUTH_OK,
    AUTH_SASL,
    AUTH_SASL_CONTINUE,
    AUTH_SASL_FINAL,
    PASSWORD,
    decode_sasl_mechanisms,
    frame,
)

SCRAM = "SCRAM-SHA-256"


class AuthenticationFailed(Exception):
    """The upstream asked for something we cannot answer, or its proof was wrong."""


def md5_password(user: str, password: str, salt: bytes) -> str:
    """PostgreSQL's md5 response: 'md5' + md5(md5(password + user) + salt)."""
    inner = hashlib.md5((password + user).encode()).hexdigest()
    return "md5" + hashlib.md5(inner.encode() + salt).hexdigest()


def _saslprep(password: str) -> str:
    # PostgreSQL applies SASLprep when it can and uses the raw bytes otherwise; NFKC
    # normalisation covers the passwords the proxy generates (ASCII) and most others.
    return unicodedata.normalize("NFKC", password)


class ScramClient:
    """One SCRAM-SHA-256 exchange (no channel binding)."""

    def __init__(self, password: str, nonce: str | None = None) -> None:
        self.password = _saslprep(password)
        self.client_nonce = nonce or base64.b64encode(secrets.token_bytes(18)).decode()
        self.client_first_bare = f"n=,r={self.client_nonce}"
        self._server_signature: bytes | None = None

    def initial_response(self) -> bytes:
        """SASLInitialResponse body: mechanism, Int32 length, client-first-message."""
        first = ("n,," + self.client_first_bare).encode()
        return SCRAM.encode() + b"\x00" + struct.pack("!i", len(first)) + first

    def final_response(self, server_first: bytes) -> bytes:
        """SASLResponse body for the server-first-message (AuthenticationSASLContinue)."""
        try:
            attrs = dict(part.split("=", 1) for part in server_first.decode().split(","))
            nonce, salt, iterations = attrs["r"], base64.b64decode(attrs["s"]), int(attrs["i"])
        except (ValueError, KeyError, UnicodeDecodeError) as exc:
            raise ProtocolViolation("malformed SCRAM server-first-message") from exc
        if not nonce.startswith(self.client_nonce):
            raise AuthenticationFailed("SCRAM server nonce does not extend ours")
        salted = hashlib.pbkdf2_hmac("sha256", self.password.encode(), salt, iterations)
        client_key = hmac.digest(salted, b"Client Key", "sha256")
        stored_key = hashlib.sha256(client_key).digest()
        without_proof = f"c=biws,r={nonce}"
        auth_message = f"{self.client_first_bare},{server_first.decode()},{without_proof}".encode()
        client_signature = hmac.digest(stored_key, auth_message, "sha256")
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
        server_key = hmac.digest(salted, b"Server Key", "sha256")
        self._server_signature = hmac.digest(server_key, auth_message, "sha256")
        return f"{without_proof},p={base64.b64encode(proof).decode()}".encode()

    def verify_final(self, server_final: bytes) -> None:
        text = server_final.decode(errors="replace")
        if not text.startswith("v=") or self._server_signature is None:
            raise AuthenticationFailed(f"SCRAM authentication failed: {text}")
        if not hmac.compare_digest(base64.b64decode(text[2:]), self._server_signature):
            raise AuthenticationFailed("SCRAM server signature mismatch")


class UpstreamLogin:
    """Answers the upstream's Authentication* requests for one (user, password)."""

    def __init__(self, user: str, password: str | None) -> None:
        self.user = user
        self.password = password
        self._scram: ScramClient | None = None
        self.done = False

    def respond(self, code: int, data: bytes) -> bytes:
        if code == AUTH_OK:
            self.done = True
            return b""
        if self.password is None:
            raise AuthenticationFailed(f"the upstream asks for a password (method {code}) and none is configured")
        if code == AUTH_CLEARTEXT:
            return frame(PASSWORD, self.password.encode() + b"\x00")
        if code == AUTH_MD5:
            return frame(PASSWORD, md5_password(self.user, self.password, data[:4]).encode() + b"\x00")
        if code == AUTH_SASL:
            if SCRAM not in decode_sasl_mechanisms(data):
                raise AuthenticationFailed(f"no supported SASL mechanism in {decode_sasl_mechanisms(data)}")
            self._scram = ScramClient(self.password)
            return frame(PASSWORD, self._scram.initial_response())
        if code == AUTH_SASL_CONTINUE and self._scram is not None:
            return frame(PASSWORD, self._scram.final_response(data))
        if code == AUTH_SASL_FINAL and self._scram is not None:
            self._scram.verify_final(data)
            return b""
        raise AuthenticationFailed(f"unsupported authentication request {code}")

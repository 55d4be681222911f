"""Bearer tokens: JWTs we sign, and JWTs from issuers the configuration trusts.

Claims, as Docker's token specification has them:

    iss  who signed it (ours: `auth.issuer`)    aud  the registry (`auth.service`)
    sub  the account ("" when anonymous)        exp, nbf, iat  seconds since the epoch
    jti  a random id                            access  [{type, name, actions}, ...]
    account  ours only: the account's id, `user:<id>` or `robot:<id>` (none if anonymous)

Verification accepts only the configured asymmetric algorithms, and only with a key of the
matching type, so neither `alg=none` nor an HMAC signature keyed with a public key gets in.
Issuer, audience and times are checked with a small leeway for clock skew. Every failure
is an `InvalidToken` whose reason is safe to show (it never includes the token).
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from registry.auth.keys import KeyRing
from registry.auth.scopes import Scope, ScopeError, parse_access_claim

log = logging.getLogger("registry.auth")

ASYMMETRIC_ALGORITHMS = frozenset(
    {"ES256", "ES384", "ES512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "EdDSA"}
)
MAX_TOKEN_LENGTH = 16 * 1024
BUILTIN_REQUIRED = ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"]
EXTERNAL_REQUIRED = ["iss", "aud", "exp"]
JWKS_REFRESH_COOLDOWN = 30.0
JWKS_MAX_AGE = 300.0

VerifyingKey = (
    ec.EllipticCurvePublicKey | rsa.RSAPublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)


class InvalidToken(Exception):
    """A token we will not accept; the message says why, for `error_description`."""


class TrustConfigError(ValueError):
    """A trusted issuer entry that cannot be used."""


def allowed_algorithms(configured: Iterable[str]) -> frozenset[str]:
    chosen = frozenset(configured)
    refused = chosen - ASYMMETRIC_ALGORITHMS
    if refused:
        raise TrustConfigError(
            f"algorithms {sorted(refused)} are not allowed: use asymmetric ones "
            f"({', '.join(sorted(ASYMMETRIC_ALGORITHMS))})"
        )
    return chosen


def key_fits(algorithm: str, key: Any) -> bool:
    """Whether `algorithm` is one that a key of this type signs with."""
    if isinstance(key, ec.EllipticCurvePublicKey):
        wanted = {"secp256r1": "ES256", "secp384r1": "ES384", "secp521r1": "ES512"}
        return wanted.get(key.curve.name) == algorithm
    if isinstance(key, rsa.RSAPublicKey):
        return algorithm[:2] in ("RS", "PS")
    if isinstance(key, ed25519.Ed25519PublicKey | ed448.Ed448PublicKey):
        return algorithm == "EdDSA"
    return False


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    issued_at: float
    expires_in: int


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    subject: str
    issuer: str
    access: list[Scope]
    builtin: bool  # signed by us (so `sub` names one of our accounts)
    jti: str | None
    account: str | None = None  # ours: `user:<id>` or `robot:<id>`
    kid: str | None = None  # the key it was verified with
    expires_at: float = 0.0  # its `exp`
    # `access` by resource, as every request with the token asks (see `permits`).
    _index: dict[tuple[str, str], frozenset[str]] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )

    def __post_init__(self) -> None:
        index: dict[tuple[str, str], set[str]] = {}
        for scope in self.access:
            index.setdefault((scope.type, scope.name), set()).update(scope.actions)
        object.__setattr__(self, "_index", {k: frozenset(v) for k, v in index.items()})

    def permits(self, resource_type: str, name: str, actions: Iterable[str]) -> bool:
        """Whether `access` allows every one of `actions` on the resource (as `covers`)."""
        have = self._index.get((resource_type, name), frozenset())
        return "*" in have or have.issuperset(actions)


class TokenIssuer:
    def __init__(
        self,
        keys: KeyRing,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys, self.issuer, self.audience = keys, issuer, audience
        self.ttl_seconds, self.clock = ttl_seconds, clock

    async def issue(
        self, subject: str, access: Iterable[Scope], account: str | None = None
    ) -> IssuedToken:
        key = await self.keys.signing_key()
        now = int(self.clock())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": self.audience,
            "exp": now + self.ttl_seconds,
            "nbf": now,
            "iat": now,
            "jti": secrets.token_urlsafe(16),
            "access": [scope.claim() for scope in access],
        }
        if account is not None:
            claims["account"] = account
        token = jwt.encode(
            claims, key.private_key, algorithm=key.algorithm, headers={"kid": key.kid, "typ": "JWT"}
        )
        return IssuedToken(token, float(now), self.ttl_seconds)


# Trusted external issuers ----------------------------------------------------------------


@dataclass
class TrustedIssuer:
    """An issuer whose tokens we accept: its keys from a JWKS (file or URL) or a PEM key."""

    issuer: str
    audience: str
    algorithms: frozenset[str]
    keys: dict[str | None, VerifyingKey] = field(default_factory=dict)
    jwks_url: str | None = None
    _fetched_at: float | None = None

    async def key_for(self, kid: str | None) -> VerifyingKey | None:
        key = self._known(kid)
        if self.jwks_url is None:
            return key
        age = None if self._fetched_at is None else time.monotonic() - self._fetched_at
        if age is None or age > JWKS_MAX_AGE or (key is None and age > JWKS_REFRESH_COOLDOWN):
            await self._fetch()
            key = self._known(kid)
        return key

    def known(self, kid: str | None) -> VerifyingKey | None:
        """The key for `kid` among those already loaded."""
        return self._known(kid)

    def _known(self, kid: str | None) -> VerifyingKey | None:
        if kid is not None and kid in self.keys:
            return self.keys[kid]
        if None in self.keys:  # a PEM key, or a JWKS entry without kid
            return self.keys[None]
        if kid is None and len(self.keys) == 1:
            return next(iter(self.keys.values()))
        return None

    async def _fetch(self) -> None:
        assert self.jwks_url is not None
        # Imported here: httpx brings rich, click and pygments along (18 MiB per worker),
        # and only a registry trusting an external issuer by its JWKS URL needs it.
        import httpx

        self._fetched_at = time.monotonic()
        try:
            async with httpx.AsyncClient(timeout=10, follow_redirects=False) as client:
                answer = await client.get(self.jwks_url)
                answer.raise_for_status()
                self.keys = jwks_keys(answer.json())
        except (httpx.HTTPError, ValueError, RecursionError, TrustConfigError) as exc:
            log.warning("could not fetch the JWKS of %s: %s", self.issuer, exc)


def jwks_keys(document: Any) -> dict[str | None, VerifyingKey]:
    """The asymmetric signing keys of a JWKS document, by kid (symmetric keys are refused)."""
    if not isinstance(document, Mapping) or not isinstance(document.get("keys"), list):
        raise TrustConfigError("a JWKS is an object with a list of keys")
    found: dict[str | None, VerifyingKey] = {}
    for entry in document["keys"]:
        if not isinstance(entry, Mapping) or entry.get("kty") not in ("EC", "RSA", "OKP"):
            continue
        if entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK.from_dict(dict(entry)).key
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, RecursionError):
            continue
        if isinstance(key, VerifyingKey):
            found[entry.get("kid")] = key
    if not found:
        raise TrustConfigError("the JWKS holds no usable signing key")
    return found


def pem_key(data: bytes) -> VerifyingKey:
    """A public key, or the key of an X.509 certificate, in PEM."""
    try:
        if b"CERTIFICATE" in data:
            key: Any = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except ValueError as exc:
        raise TrustConfigError(f"unreadable PEM key: {exc}") from None
    if not isinstance(key, VerifyingKey):
        raise TrustConfigError("the PEM key is not an EC, RSA or EdDSA public key")
    return key


def trusted_issuer(entry: Mapping[str, Any], default_audience: str) -> TrustedIssuer:
    """One `auth.trusted_issuers` entry: issuer, audience, and jwks_url|jwks_file|pem|pem_file."""
    if not isinstance(entry, Mapping):
        raise TrustConfigError("each trusted issuer is a mapping")
    known = {"issuer", "audience", "algorithms", "jwks_url", "jwks_file", "pem", "pem_file"}
    unknown = set(entry) - known
    if unknown:
        raise TrustConfigError(f"unknown keys in a trusted issuer: {sorted(unknown)}")
    issuer = entry.get("issuer")
    if not isinstance(issuer, str) or not issuer:
        raise TrustConfigError("a trusted issuer needs `issuer`")
    algorithms = allowed_algorithms(entry.get("algorithms") or ["RS256", "ES256"])
    trusted = TrustedIssuer(issuer, str(entry.get("audience") or default_audience), algorithms)
    sources = [k for k in ("jwks_url", "jwks_file", "pem", "pem_file") if entry.get(k)]
    if len(sources) != 1:
        raise TrustConfigError(f"{issuer}: give exactly one of jwks_url, jwks_file, pem, pem_file")
    source = sources[0]
    value = str(entry[source])
    if source == "jwks_url":
        if not value.startswith(("https://", "http://")):
            raise TrustConfigError(f"{issuer}: jwks_url must be an http(s) URL")
        trusted.jwks_url = value
    elif source == "jwks_file":
        try:
            trusted.keys = jwks_keys(json.loads(Path(value).read_text()))
        except (OSError, ValueError) as exc:
            raise TrustConfigError(f"{issuer}: cannot read {value}: {exc}") from None
    elif source == "pem_file":
        try:
            trusted.keys = {None: pem_key(Path(value).read_bytes())}
        except OSError as exc:
            raise TrustConfigError(f"{issuer}: cannot read {value}: {exc}") from None
    else:
        trusted.keys = {None: pem_key(value.encode())}
    return trusted


# Verification ----------------------------------------------------------------------------


class TokenVerifier:
    def __init__(
        self,
        keys: KeyRing,
        issuer: str,
        audience: str,
        algorithms: Iterable[str],
        leeway_seconds: float,
        trusted: Iterable[TrustedIssuer] = (),
    ) -> None:
        self.keys, self.issuer, self.audience = keys, issuer, audience
        self.algorithms = allowed_algorithms(algorithms)
        self.leeway = leeway_seconds
        self.trusted = {t.issuer: t for t in trusted}
        if issuer in self.trusted:
            raise TrustConfigError(f"{issuer} is our own issuer name; a trusted one needs another")

    async def verify(self, token: str) -> VerifiedToken:
        header, unverified = _peek(token)
        algorithm = header.get("alg")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise InvalidToken("malformed kid")
        issuer = unverified.get("iss")
        if issuer == self.issuer:
            if algorithm not in self.algorithms:
                raise InvalidToken("signing algorithm not allowed")
            signing = await self.keys.verification_key(kid) if kid else None
            if signing is None:
                raise InvalidToken("unknown signing key")
            key: Any = signing.public_key
            audience, required, builtin = self.audience, BUILTIN_REQUIRED, True
        elif isinstance(issuer, str) and issuer in self.trusted:
            trusted = self.trusted[issuer]
            if algorithm not in trusted.algorithms:
                raise InvalidToken("signing algorithm not allowed")
            key = await trusted.key_for(kid)
            if key is None:
                raise InvalidToken("unknown signing key")
            audience, required, builtin = trusted.audience, EXTERNAL_REQUIRED, False
        else:
            raise InvalidToken("untrusted issuer")
        assert isinstance(algorithm, str)
        if not key_fits(algorithm, key):
            raise InvalidToken("signing algorithm does not fit the key")
        claims = self._decode(token, key, algorithm, audience, issuer, required)
        subject = claims.get("sub", "")
        jti = claims.get("jti")
        account = claims.get("account") if builtin else None
        if (
            not isinstance(subject, str)
            or (jti is not None and not isinstance(jti, str))
            or (account is not None and not isinstance(account, str))
        ):
            raise InvalidToken("malformed claims")
        try:
            access = parse_access_claim(claims.get("access"))
        except ScopeError:
            raise InvalidToken("malformed access claim") from None
        expires = claims["exp"]
        return VerifiedToken(subject, issuer, access, builtin, jti, account, kid, float(expires))

    def still_trusted(self, verified: VerifiedToken) -> bool:
        """Whether the key that verified this token still verifies tokens (without reading
        the key store or fetching a JWKS): a key rotated out, or gone from a trusted issuer's
        JWKS, ends the tokens it signed, cached ones included."""
        if verified.builtin:
            return verified.kid is not None and self.keys.known(verified.kid) is not None
        trusted = self.trusted.get(verified.issuer)
        return trusted is not None and trusted.known(verified.kid) is not None

    def _decode(
        self, token: str, key: Any, algorithm: str, audience: str, issuer: str, required: list[str]
    ) -> dict[str, Any]:
        try:
            return jwt.decode(
                token,
                key,
                algorithms=[algorithm],
                audience=audience,
                issuer=issuer,
                leeway=self.leeway,
                options={"require": required},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("token expired") from None
        except jwt.ImmatureSignatureError:
            raise InvalidToken("token not yet valid") from None
        except jwt.InvalidAudienceError:
            raise InvalidToken("token is for another audience") from None
        except jwt.InvalidIssuerError:
            raise InvalidToken("wrong issuer") from None
        except jwt.InvalidSignatureError:
            raise InvalidToken("bad signature") from None
        except jwt.MissingRequiredClaimError as exc:
            raise InvalidToken(f"missing claim {exc.claim}") from None
        except (jwt.PyJWTError, ValueError, TypeError, KeyError, RecursionError):
            raise InvalidToken("invalid token") from None


def _peek(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims before any check: only to pick the key; nothing here is trusted."""
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise InvalidToken("malformed token")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except (jwt.PyJWTError, ValueError, TypeError, KeyError, RecursionError):
        raise InvalidToken("malformed token") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise InvalidToken("malformed token")
    return header, claims

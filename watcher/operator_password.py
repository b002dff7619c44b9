"""The back office's operator password: made once by `deposit-watcher operator-password`, stored only as a
scrypt hash line in the file `ui.operator_password_file` names.

The line is `$scrypt$ln=15,r=8,p=1$<salt>$<hash>` (base64 without padding, as the PHC string format
writes it): scrypt, unlike the API keys' plain SHA-256 (watcher.apikeys), because a password is chosen by a
person and a leaked hash must not be cheap to guess from. ln=15 (N=32768), r=8: 32 MiB and some 0.1 s per
check, which the sign-in rate limit makes the most an attacker can ask of the daemon. Pure: no I/O.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass, field

DEFAULT_LN, DEFAULT_R, DEFAULT_P = 15, 8, 1
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD_CHARS = 12
MAX_PASSWORD_CHARS = 1024  # a longer one is refused before hashing: no hashing of megabytes per attempt
# Bounds on what a hash line may ask for (a typo must not make each sign-in take minutes or gigabytes).
_MAX_LN, _MAX_R, _MAX_P = 20, 32, 4
_LINE = re.compile(
    r"\$scrypt\$ln=(\d{1,2}),r=(\d{1,2}),p=(\d)\$([A-Za-z0-9+/]{16,88})\$([A-Za-z0-9+/]{43,88})"
)


@dataclass(frozen=True, slots=True)
class OperatorPassword:
    ln: int  # log2 of scrypt's N
    r: int
    p: int
    salt: bytes = field(repr=False)
    digest: bytes = field(repr=False)

    def line(self) -> str:
        return f"$scrypt$ln={self.ln},r={self.r},p={self.p}${_b64(self.salt)}${_b64(self.digest)}"

    def verify(self, password: str) -> bool:
        """Whether `password` is this one (constant-time compare). Slow on purpose: call it off the loop."""
        if not password or len(password) > MAX_PASSWORD_CHARS:
            return False
        found = _scrypt(password, self.salt, self.ln, self.r, self.p, len(self.digest))
        return hmac.compare_digest(found, self.digest)


def hash_password(password: str) -> OperatorPassword:
    """A new hash of `password` with a random salt; ValueError if it is too short or too long."""
    if len(password) < MIN_PASSWORD_CHARS:
        raise ValueError(f"the password must have at least {MIN_PASSWORD_CHARS} characters")
    if len(password) > MAX_PASSWORD_CHARS:
        raise ValueError(f"the password must have at most {MAX_PASSWORD_CHARS} characters")
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, DEFAULT_LN, DEFAULT_R, DEFAULT_P, HASH_BYTES)
    return OperatorPassword(DEFAULT_LN, DEFAULT_R, DEFAULT_P, salt, digest)


def parse_password_line(text: str) -> OperatorPassword:
    """The hash line of a password file; ValueError saying why without repeating the text (a file holding
    the password itself must not put it in an error message or a log)."""
    m = _LINE.fullmatch(text.strip())
    if m is None:
        raise ValueError(
            "it does not hold a scrypt hash line ($scrypt$ln=...); a plain password is refused: "
            "make the line with `deposit-watcher operator-password`"
        )
    ln, r, p = int(m[1]), int(m[2]), int(m[3])
    if not (10 <= ln <= _MAX_LN and 1 <= r <= _MAX_R and 1 <= p <= _MAX_P):
        raise ValueError(
            f"its scrypt parameters are out of bounds (ln 10-{_MAX_LN}, r 1-{_MAX_R}, p 1-{_MAX_P})"
        )
    try:
        salt, digest = _unb64(m[4]), _unb64(m[5])
    except ValueError:
        raise ValueError("its salt or hash is not valid base64") from None
    if len(salt) < 8 or len(digest) < 32:
        raise ValueError("its salt or hash is too short")
    return OperatorPassword(ln, r, p, salt, digest)


def _scrypt(password: str, salt: bytes, ln: int, r: int, p: int, length: int) -> bytes:
    n = 1 << ln
    # scrypt needs 128 * r * N bytes (and p times that when run at once); OpenSSL's default cap is 32 MiB.
    maxmem = 128 * r * n * p + (1 << 20)
    return hashlib.scrypt(
        password.encode("utf-8", "surrogatepass"), salt=salt, n=n, r=r, p=p, maxmem=maxmem, dklen=length
    )


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)

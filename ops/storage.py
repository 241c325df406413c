"""S3 storage for DVC data: a DVC S3 remote, push/pull with a pre-flight reachability
check and retries, and a check that the remote holds no partial object.

Endpoint and credentials come from the environment only: ``AWS_ACCESS_KEY_ID``,
``AWS_SECRET_ACCESS_KEY`` (``AWS_SESSION_TOKEN``), ``AWS_DEFAULT_REGION``, and for an
S3-compatible store ``AWS_ENDPOINT_URL`` (or ``MLFLOW_S3_ENDPOINT_URL``); no endpoint means
AWS. Nothing here writes a credential to a file or prints one.

DVC 3 stores each object under ``<remote>/files/md5/<2 hex>/<30 hex>[.dir]``, the md5 of
its content, so :func:`verify` can tell a complete object from a partial one.
"""

from __future__ import annotations

import hashlib
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from udcguard.errors import ServiceError

T = TypeVar("T")
ENDPOINT_VARS = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL")
SECRET_VARS = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ACCESS_KEY_ID")
_MD5_KEY = re.compile(r"^([0-9a-f]{2})/([0-9a-f]{30})(\.dir)?$")


class StorageError(ServiceError):
    """The S3 store is unreachable, refuses access, or holds a bad object; names the endpoint/key."""


class Permanent(Exception):
    """Wraps an error that retrying cannot fix (stops :func:`retry` at once)."""


def retry_settings() -> tuple[int, float]:
    """(attempts, base delay in s) from UDCGUARD_S3_ATTEMPTS / UDCGUARD_S3_RETRY_DELAY (4, 1.0)."""
    try:
        attempts = int(os.environ.get("UDCGUARD_S3_ATTEMPTS") or 4)
        delay = float(os.environ.get("UDCGUARD_S3_RETRY_DELAY") or 1.0)
    except ValueError as err:
        raise StorageError(f"UDCGUARD_S3_ATTEMPTS / UDCGUARD_S3_RETRY_DELAY: {err}") from None
    return max(1, min(attempts, 20)), max(0.0, delay)


def retry(fn: Callable[[], T], what: str, attempts: int, base_delay: float,
          sleep: Callable[[float], None] = time.sleep) -> T:
    """Call ``fn`` up to ``attempts`` times, sleeping base_delay * 2**i between tries.

    Raises StorageError ``{what} after {n} attempts ({reason})``; a :class:`Permanent`
    error stops at once with its own message.
    """
    last: BaseException | None = None
    for i in range(attempts):
        try:
            return fn()
        except Permanent as err:
            raise StorageError(redact(str(err))) from None
        except Exception as err:  # noqa: BLE001 - boto, requests, MLflow and OS errors alike
            last = err
            if i + 1 < attempts:
                sleep(base_delay * 2**i)
    raise StorageError(f"{what} after {attempts} attempts ({reason(last)})") from None


def reason(err: BaseException | None) -> str:
    """A short, credential-free reason: the innermost OS error's text, else the first line."""
    seen, cur, found = 0, err, None
    while cur is not None and seen < 20:
        if isinstance(cur, OSError) and cur.strerror:
            found = cur.strerror
        cur, seen = cur.__cause__ or cur.__context__, seen + 1
    text = found or (str(err).strip().splitlines() or [type(err).__name__])[0]
    return redact(text)[:200]


def redact(text: str) -> str:
    """Replace every credential value found in the environment with ``***``."""
    for var in SECRET_VARS:
        value = os.environ.get(var)
        if value and len(value) >= 4:
            text = text.replace(value, "***")
    return text


def endpoint_from_env() -> str | None:
    """The S3-compatible endpoint URL from the environment; None means AWS."""
    return next((os.environ[v] for v in ENDPOINT_VARS if os.environ.get(v)), None)


def label(endpoint: str | None) -> str:
    """How errors name an endpoint: its URL, or AWS S3 and the region."""
    return endpoint or f"AWS S3 ({os.environ.get('AWS_DEFAULT_REGION') or 'default region'})"


def split_url(url: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` -> (bucket, prefix without slashes at either end)."""
    m = re.fullmatch(r"s3://([^/]+)/?(.*)", url)
    if not m or len(m.group(1)) < 3:
        raise StorageError(f"{url!r}: expected s3://bucket[/prefix] (bucket of 3+ characters)")
    return m.group(1), m.group(2).strip("/")


def s3_client(endpoint: str | None, connect_timeout: float = 3.0):
    """A boto3 S3 client with short timeouts and no retries of its own (we retry)."""
    import boto3
    from botocore.config import Config

    cfg = Config(connect_timeout=connect_timeout, read_timeout=30, retries={"total_max_attempts": 1})
    return boto3.client("s3", endpoint_url=endpoint, config=cfg)


def check(url: str, endpoint: str | None, attempts: int = 4, base_delay: float = 1.0,
          sleep: Callable[[float], None] = time.sleep) -> None:
    """Pre-flight: head_bucket on the bucket of ``url``, retried with exponential backoff."""
    from botocore.exceptions import ClientError, NoCredentialsError

    bucket, _ = split_url(url)
    client = s3_client(endpoint)

    def head() -> None:
        try:
            client.head_bucket(Bucket=bucket)
        except NoCredentialsError:
            raise Permanent("no S3 credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY") from None
        except ClientError as err:
            code = str(err.response.get("Error", {}).get("Code", ""))
            if code in ("404", "NoSuchBucket"):
                raise Permanent(f"bucket {bucket!r} not found at S3 endpoint {label(endpoint)}") from None
            if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise Permanent(f"access to bucket {bucket!r} denied at S3 endpoint {label(endpoint)} "
                                f"({code}: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)") from None
            status = int(err.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 500)
            if status < 500 and status not in (408, 429):  # e.g. 301: the bucket is in another region
                raise Permanent(f"bucket {bucket!r} at S3 endpoint {label(endpoint)}: HTTP {status} {code} "
                                "(check the bucket name and AWS_DEFAULT_REGION)") from None
            raise

    retry(head, f"S3 endpoint {label(endpoint)} unreachable", attempts, base_delay, sleep)


# ------------------------------------------------------------------------------ DVC remote
@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    endpoint: str | None


def _dvc(args: list[str], cwd: str, timeout: float = 3600) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise StorageError(f"dvc {args[0]} in {cwd}: no answer within {timeout:.0f} s") from None


def _last_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln.strip() for ln in (r.stderr + "\n" + r.stdout).splitlines() if ln.strip()]
    err = [ln for ln in lines if ln.startswith("ERROR")]
    return redact((err or lines or [f"exit status {r.returncode}"])[-1])[:300]


def setup_remote(url: str, name: str = "storage", project: bool = False, cwd: str = ".") -> Remote:
    """Add (or replace) an S3 remote as DVC's default; endpointurl from the environment, if any.

    Written to .dvc/config.local (git-ignored) unless ``project`` (.dvc/config), as
    ``dvc remote add -d -f [--local]`` would; credentials are never written (DVC reads
    them from the environment).
    """
    from dvc.config import ConfigError

    split_url(url)
    endpoint = endpoint_from_env()
    section = {"url": url, **({"endpointurl": endpoint} if endpoint else {})}
    try:
        with _config(cwd).edit("repo" if project else "local") as conf:
            conf["remote"][name] = section
            conf["core"]["remote"] = name
    except ConfigError as err:
        raise StorageError(f"DVC remote {name!r}: {redact(str(err))}") from None
    return Remote(name, url, endpoint)


def _config(cwd: str):
    from dvc.config import Config
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        return Config(dvc_dir=Repo.find_dvc_dir(root=cwd))
    except NotDvcRepoError:
        raise StorageError(f"{os.path.abspath(cwd)}: not a DVC repository (run `dvc init`)") from None


def remote(name: str | None = None, cwd: str = ".") -> Remote:
    """The named (or default) DVC remote of the repository at ``cwd``, all config levels merged."""
    conf = _config(cwd)
    name = name or conf["core"].get("remote")
    if not name:
        raise StorageError(f"{cwd}: no default DVC remote (run `python -m flows remote setup s3://bucket/prefix`)")
    section: dict[str, Any] | None = conf["remote"].get(name)
    if section is None:
        raise StorageError(f"DVC remote {name!r} not found (known: {', '.join(conf['remote']) or 'none'})")
    url = str(section["url"])
    split_url(url)
    return Remote(name, url, section.get("endpointurl") or endpoint_from_env())


def transfer(command: str, name: str | None = None, cwd: str = ".", attempts: int = 4, base_delay: float = 1.0,
             sleep: Callable[[float], None] = time.sleep) -> str:
    """``dvc push`` / ``dvc pull`` after a pre-flight check, retried; returns DVC's summary line.

    A failed push touches no local file (the check runs first; DVC only reads the cache).
    """
    if command not in ("push", "pull"):
        raise StorageError(f"transfer: {command!r} is neither push nor pull")
    rem = remote(name, cwd)
    check(rem.url, rem.endpoint, attempts, base_delay, sleep)

    def run() -> str:
        r = _dvc([command, "-r", rem.name], cwd)
        if r.returncode != 0:
            raise RuntimeError(_last_line(r))
        return _last_line(r)

    return retry(run, f"dvc {command} with {rem.url} at S3 endpoint {label(rem.endpoint)} failed",
                 attempts, base_delay, sleep)


def verify(url: str, endpoint: str | None, deep: bool = False) -> int:
    """Check that every object under ``url``/files/md5 has the md5 its key names.

    An object whose single-part ETag equals its key is accepted without download unless
    ``deep``; any other is downloaded and hashed. Returns the number of objects checked.
    """
    bucket, prefix = split_url(url)
    root = f"{prefix}/files/md5/" if prefix else "files/md5/"
    client, bad, n = s3_client(endpoint), [], 0
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=root)
    for page in pages:
        for obj in page.get("Contents", []):
            n += 1
            key, m = obj["Key"], _MD5_KEY.match(obj["Key"][len(root):])
            if m is None:
                bad.append(f"s3://{bucket}/{key} (not a DVC md5 key)")
                continue
            want = m.group(1) + m.group(2)
            if not deep and obj.get("ETag", "").strip('"') == want:
                continue
            h = hashlib.md5(usedforsecurity=False)
            for chunk in client.get_object(Bucket=bucket, Key=key)["Body"].iter_chunks(1 << 20):
                h.update(chunk)
            if h.hexdigest() != want:
                bad.append(f"s3://{bucket}/{key} (content md5 {h.hexdigest()})")
    if bad:
        raise StorageError(f"{len(bad)} of {n} objects under s3://{bucket}/{root} do not match their md5 key "
                           f"(partial or corrupt upload; delete them and push again): {bad[0]}")
    return n

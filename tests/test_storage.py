"""S3 storage without the pipeline: a dead endpoint is retried with growing delays and
fails with one line naming it (local files untouched, no secret printed); verify catches
an object whose content does not match its md5 key; MLflow artefact uploads retry too."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ops import storage
from tests.conftest import REPO

SECRET = "s3cr3t-never-print-me-0123456789"


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed on exit: connecting is refused


def _aws_env(monkeypatch: pytest.MonkeyPatch, tmp: Path, endpoint: str | None) -> dict[str, str]:
    env = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_CONFIG_FILE": str(tmp / "no-aws-config"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp / "no-aws-creds"),
           "NO_PROXY": "127.0.0.1,localhost"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    for k in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(k, raising=False)
    if endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    return env


def _snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and ".dvc/tmp" not in str(p)}


def test_retry_backs_off_exponentially_then_names_the_failure() -> None:
    slept: list[float] = []
    calls = []

    def flaky() -> str:
        calls.append(1)
        raise ConnectionRefusedError(111, "Connection refused")

    with pytest.raises(storage.StorageError) as err:
        storage.retry(flaky, "S3 endpoint http://x unreachable", 4, 0.5, sleep=slept.append)
    assert len(calls) == 4 and slept == [0.5, 1.0, 2.0]
    assert str(err.value) == "S3 endpoint http://x unreachable after 4 attempts (Connection refused)"
    ok = iter([RuntimeError("blip"), "done"])

    def second_time() -> str:
        item = next(ok)
        if isinstance(item, Exception):
            raise item
        return item

    assert storage.retry(second_time, "x", 3, 0.1, sleep=slept.append) == "done"


def test_push_to_dead_endpoint_retries_and_leaves_local_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint = f"http://127.0.0.1:{_dead_port()}"
    env = {**os.environ, **_aws_env(monkeypatch, tmp_path, endpoint), "AWS_ENDPOINT_URL": endpoint}
    repo = tmp_path / "repo"
    repo.mkdir()
    dvc = lambda *a: subprocess.run([sys.executable, "-m", "dvc", *a], cwd=repo, env=env, capture_output=True,
                                    text=True, timeout=120)
    assert dvc("init", "--no-scm", "-q").returncode == 0
    (repo / "data").mkdir()
    (repo / "data" / "x.bin").write_bytes(os.urandom(4096))
    assert dvc("add", "data/x.bin").returncode == 0
    cli = lambda *a: subprocess.run([sys.executable, "-m", "flows", *a], cwd=repo, capture_output=True, text=True,
                                    timeout=120, env={**env, "PYTHONPATH": f"{REPO}:{REPO / 'src'}"})
    r = cli("remote", "setup", "s3://udc-bucket/dvc")
    assert r.returncode == 0, r.stderr
    assert endpoint in r.stdout and "config.local" in r.stdout
    assert "udc-bucket" not in (repo / ".dvc" / "config").read_text()  # --local by default
    local_conf = (repo / ".dvc" / "config.local").read_text()
    assert endpoint in local_conf and SECRET not in local_conf and "testing-key-id" not in local_conf
    before = _snapshot(repo)

    slept: list[float] = []
    with pytest.raises(storage.StorageError) as err:
        storage.transfer("push", cwd=str(repo), attempts=4, base_delay=0.05, sleep=slept.append)
    assert slept == [0.05, 0.1, 0.2]
    assert str(err.value) == f"S3 endpoint {endpoint} unreachable after 4 attempts (Connection refused)"

    r = cli("remote", "push", "--attempts", "3", "--retry-delay", "0.01")
    assert r.returncode == 1
    assert r.stderr.strip() == f"error: S3 endpoint {endpoint} unreachable after 3 attempts (Connection refused)"
    r2 = cli("remote", "check", "--attempts", "2", "--retry-delay", "0")
    assert r2.returncode == 1 and "after 2 attempts" in r2.stderr and endpoint in r2.stderr
    for out in (r, r2):
        assert SECRET not in out.stdout + out.stderr
    assert _snapshot(repo) == before


def test_verify_catches_partial_object_and_missing_bucket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from moto import mock_aws

    _aws_env(monkeypatch, tmp_path, None)
    with mock_aws():
        import boto3

        s3 = boto3.client("s3", region_name="us-east-1")
        s3.create_bucket(Bucket="udc-bucket")
        put = lambda key, body: s3.put_object(Bucket="udc-bucket", Key=f"dvc/files/md5/{key[:2]}/{key[2:]}", Body=body)
        good, listing = os.urandom(1000), b'[{"md5": "0", "relpath": "a"}]'
        put(hashlib.md5(good).hexdigest(), good)
        put(hashlib.md5(listing).hexdigest() + ".dir", listing)
        for deep in (False, True):
            assert storage.verify("s3://udc-bucket/dvc", None, deep=deep) == 2
        whole = os.urandom(5000)
        bad_key = hashlib.md5(whole).hexdigest()
        put(bad_key, whole[:1234])  # a partial upload under the complete object's key
        for deep in (False, True):
            with pytest.raises(storage.StorageError) as err:
                storage.verify("s3://udc-bucket/dvc", None, deep=deep)
            msg = str(err.value)
            assert "\n" not in msg and "1 of 3 objects" in msg, msg
            assert f"s3://udc-bucket/dvc/files/md5/{bad_key[:2]}/{bad_key[2:]}" in msg
            assert hashlib.md5(whole[:1234]).hexdigest() in msg
        slept: list[float] = []
        with pytest.raises(storage.StorageError, match="bucket 'no-such-bucket' not found at S3 endpoint AWS S3"):
            storage.check("s3://no-such-bucket/x", None, attempts=4, base_delay=0.01, sleep=slept.append)
        assert slept == []  # not retried: retrying cannot create the bucket
        storage.check("s3://udc-bucket/dvc", None, attempts=1)


def test_mlflow_artifact_upload_retries_then_names_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    from ops import tracking

    endpoint = f"http://127.0.0.1:{_dead_port()}"
    _aws_env(monkeypatch, tmp_path, None)
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")  # botocore's own retries off: ours are measured
    monkeypatch.setenv("UDCGUARD_S3_ATTEMPTS", "3")
    monkeypatch.setenv("UDCGUARD_S3_RETRY_DELAY", "0.25")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    slept: list[float] = []
    monkeypatch.setattr(tracking, "_sleep", slept.append)
    client = mlflow.MlflowClient(tracking.tracking_uri())
    exp = client.create_experiment("s3-artefacts", artifact_location="s3://udc-bucket/mlflow")
    rid = client.create_run(exp).info.run_id
    f = tmp_path / "report.html"
    f.write_text("<html></html>")
    with pytest.raises(tracking.ArtifactStoreError) as err:
        tracking.RunLogger(rid).log_artifact(f, "reports")
    msg = str(err.value)
    assert slept == [0.25, 0.5]
    assert msg.startswith(f"MLflow artefact store {endpoint} (s3://udc-bucket/mlflow/"), msg
    assert "after 3 attempts" in msg and "\n" not in msg and SECRET not in msg
    assert f.read_text() == "<html></html>"

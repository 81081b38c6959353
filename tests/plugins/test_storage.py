"""Storage on local folders and on gs:// (GCS emulator): listing, streaming I/O, deletion."""

from __future__ import annotations

import json

import pytest
from gcsfs.core import GCSFileSystem

from image_embeddings_airflow import storage

NAMES = ["a.jpg", "a/b.jpg", "a/c/d.png", "a0.jpg", "b.txt", "Z.JPG", "é.jpg", "sp ace/#1%.jpg"]


@pytest.fixture(params=["local", "gcs"])
def root(request, tmp_path):
    """An empty folder: a local path or a gs:// prefix in the emulator's bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    bucket = request.getfixturevalue("gcs_bucket")
    return f"gs://{bucket.name}/root"


def populate(root: str) -> list[str]:
    uris = [f"{root}/{name}" for name in NAMES]
    for uri in uris:
        storage.write_bytes(uri, uri.encode())
    return uris


def test_lists_recursively_in_lexicographic_order(root):
    uris = populate(root)
    storage.write_bytes(f"{root}-sibling/x.jpg", b"not inside root")

    listed = storage.list_files(root)

    assert not isinstance(listed, list)
    assert list(listed) == sorted(uris)


def test_lists_one_level(root):
    populate(root)

    assert list(storage.list_files(root, recursive=False)) == sorted(
        f"{root}/{name}" for name in NAMES if "/" not in name
    )


def test_missing_folder_lists_nothing(root):
    assert list(storage.list_files(f"{root}/missing")) == []


def test_subfolders_are_the_folders_one_level_down(root):
    populate(root)
    storage.write_bytes(f"{root}-sibling/x.jpg", b"not inside root")

    assert storage.subfolders(root) == ["a", "sp ace"]
    assert storage.subfolders(f"{root}/missing") == []


def test_glob_matches_names_in_one_folder(root):
    populate(root)

    assert storage.glob(f"{root}/a*.jpg") == [f"{root}/a.jpg", f"{root}/a0.jpg"]


def test_text_and_binary_round_trip(root):
    with storage.open_file(f"{root}/deep/text.txt", "w") as handle:
        handle.write("ünïcode\nline two\n")
    with storage.open_file(f"{root}/deep/text.txt", "r") as handle:
        assert handle.readlines() == ["ünïcode\n", "line two\n"]

    payload = bytes(range(256)) * 1000
    storage.write_bytes(f"{root}/blob.bin", payload)
    with storage.open_file(f"{root}/blob.bin", "rb") as handle:
        handle.seek(-10, 2)
        assert handle.read() == payload[-10:]
    assert storage.read_bytes(f"{root}/blob.bin") == payload


def test_failed_write_keeps_the_previous_file(root):
    uri = f"{root}/manifest.txt"
    storage.write_bytes(uri, b"old\n")

    with pytest.raises(RuntimeError), storage.open_file(uri, "w") as handle:
        handle.write("half of a new file\n")
        raise RuntimeError("writer failed")

    assert storage.read_bytes(uri) == b"old\n"
    assert list(storage.list_files(root)) == [uri]


def test_exists_json_and_delete(root):
    storage.write_json(f"{root}/out/_SUCCESS", {"images": 3})
    storage.write_bytes(f"{root}/out/nested/x.parquet", b"x")

    assert storage.exists(f"{root}/out/_SUCCESS")
    assert not storage.exists(f"{root}/out/missing")
    assert storage.read_json(f"{root}/out/_SUCCESS") == {"images": 3}

    assert storage.delete(f"{root}/out/nested/x.parquet")
    assert not storage.delete(f"{root}/out/nested/x.parquet")
    storage.write_bytes(f"{root}/out/nested/x.parquet", b"x")
    assert storage.delete_prefix(f"{root}/out") == 2
    assert list(storage.list_files(root)) == []
    assert storage.delete_prefix(f"{root}/out") == 0


def test_missing_file_raises_file_not_found(root):
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        storage.read_bytes(f"{root}/missing.txt")


def test_rejects_unknown_mode(tmp_path):
    with (
        pytest.raises(ValueError, match="mode must be one of"),
        storage.open_file(str(tmp_path / "x"), "a"),
    ):
        pass


def test_split_gcs_names_the_problem():
    assert storage.split_gcs("gs://bucket/a/b.jpg") == ("bucket", "a/b.jpg")
    with pytest.raises(ValueError, match="without a bucket"):
        storage.split_gcs("gs:///a.jpg")
    with pytest.raises(ValueError, match="expected a gs://"):
        storage.split_gcs("/local/a.jpg")


def service_account_key(project: str) -> dict:
    """A syntactically valid service-account key (freshly generated; it opens nothing)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    return {
        "type": "service_account",
        "project_id": project,
        "private_key_id": "0",
        "private_key": pem,
        "client_email": f"embedder@{project}.iam.gserviceaccount.com",
        "client_id": "0",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def test_production_client_comes_from_the_airflow_connection(monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    extra = {
        "keyfile_dict": json.dumps(service_account_key("photos-prod")),
        "project": "photos-prod",
    }
    connection = {"conn_type": "google_cloud_platform", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_EMBEDDINGS_STORAGE_TEST", json.dumps(connection))
    monkeypatch.setenv("IMAGE_EMBEDDINGS_GCP_CONN_ID", "image_embeddings_storage_test")

    client = storage.gcs_client()

    assert client.project == "photos-prod"
    assert client._credentials.service_account_email == (
        "embedder@photos-prod.iam.gserviceaccount.com"
    )


def test_emulator_gets_an_anonymous_client(gcs_emulator):
    from google.auth.credentials import AnonymousCredentials

    assert isinstance(storage.gcs_client("any_connection")._credentials, AnonymousCredentials)


def test_gcs_filesystem_comes_from_the_airflow_connection(monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    extra = {
        "keyfile_dict": json.dumps(service_account_key("photos-prod")),
        "project": "photos-prod",
    }
    connection = {"conn_type": "google_cloud_platform", "extra": extra}
    monkeypatch.setenv("AIRFLOW_CONN_IMAGE_EMBEDDINGS_FS_TEST", json.dumps(connection))
    monkeypatch.setenv("IMAGE_EMBEDDINGS_GCP_CONN_ID", "image_embeddings_fs_test")

    fs = storage.filesystem("gs://photos/2026-11-28/a.jpg")

    assert fs.project == "photos-prod"
    assert fs.credentials.credentials.service_account_email == (
        "embedder@photos-prod.iam.gserviceaccount.com"
    )
    bounds = fs.requests_timeout
    assert (bounds.sock_connect, bounds.sock_read) == storage.GCS_TIMEOUT_S


def test_emulator_requests_are_anonymous_and_bounded(gcs_emulator, monkeypatch):
    monkeypatch.setattr(storage, "GCS_TIMEOUT_S", (2.0, 5.0))

    fs = storage.filesystem(f"gs://{gcs_emulator}/x")

    assert fs.credentials.method == "anon" and fs.credentials.credentials is None
    # Not gcsfs's ExtendedGcsFileSystem: its gRPC layout lookup costs 60 s per operation here.
    assert type(fs) is GCSFileSystem
    assert (fs.requests_timeout.sock_connect, fs.requests_timeout.sock_read) == (2.0, 5.0)

"""No credential in task logs, XCom or rendered templates; placeholders only in .env.example;
no output read with pickle."""

from __future__ import annotations

import ast
import json
import math
import re
import secrets
import sqlite3
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.compose import ENV_EXAMPLE, env_example_entries
from tests.e2e.conftest import airflow_local, write_day
from tests.reliability.runs import REPO

DAY = "2026-11-25"
# Folders whose Python reads or writes what the project produces; tests read outputs too.
CODE_FOLDERS = ("dags", "plugins", "beam_jobs", "scripts", "benchmarks", "tests")


# --- the DAG run ------------------------------------------------------------------------------


def fake_key_file(key_id: str, key_body: str) -> dict[str, str]:
    """A service-account key as Google issues it, with marker values instead of real ones."""
    return {
        "type": "service_account",
        "project_id": "photo-project",
        "private_key_id": key_id,
        "private_key": f"-----BEGIN PRIVATE KEY-----\n{key_body}\n-----END PRIVATE KEY-----\n",
        "client_email": "embedder@photo-project.iam.gserviceaccount.com",
        "client_id": "000000000000000000000",
        "token_uri": "https://oauth2.googleapis.com/token",
    }


def contains(markers: list[str], value: object) -> list[str]:
    """The markers that occur in `value` (text, bytes or anything printable)."""
    text = value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)
    return [marker for marker in markers if marker in text]


def database_rows(database: Path) -> Iterator[tuple[str, tuple]]:
    """(table, row) for every row of every table of an SQLite database."""
    connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        tables = [
            name
            for (name,) in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
        ]
        for table in tables:
            for row in connection.execute(f'SELECT * FROM "{table}"'):
                yield table, row
    finally:
        connection.close()


@pytest.fixture(scope="module")
def secret_day(airflow_environ, tmp_path_factory):
    """One DAG run (`airflow dags test`, as `make run`) with a credential full of markers.

    The Google connection carries a service-account key in its extra (keyfile_dict), and
    GOOGLE_APPLICATION_CREDENTIALS names a key file with the same markers.
    """
    base = tmp_path_factory.mktemp("secrets")
    markers = [f"marker-key-id-{secrets.token_hex(12)}", f"MARKERBODY{secrets.token_hex(24)}"]
    key = fake_key_file(*markers)
    key_file = base / "service-account.json"
    key_file.write_text(json.dumps(key))
    connection = {
        "conn_type": "google_cloud_platform",
        "extra": {"project": "photo-project", "keyfile_dict": key},
    }
    environ = airflow_environ | {
        "IMAGE_EMBEDDINGS_INPUT_ROOT": str(base / "images"),
        "IMAGE_EMBEDDINGS_OUTPUT_ROOT": str(base / "embeddings"),
        "AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT": json.dumps(connection),
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
    }
    write_day(environ["IMAGE_EMBEDDINGS_INPUT_ROOT"], DAY, good=6, bad=1)

    done = airflow_local(environ, "dags", "test", "image_embeddings", DAY)

    log = done.stdout + done.stderr
    assert done.returncode == 0 and "state=success" in log, log[-6000:]
    return {
        "markers": markers,
        "environ": environ,
        "log": log,
        "home": Path(environ["AIRFLOW_HOME"]),
        "output": base / "embeddings" / DAY,
    }


def test_the_markers_are_where_a_leak_would_put_them(secret_day):
    """The search below looks for the right strings: they are in the credential it was given."""
    environ = secret_day["environ"]
    assert (
        contains(secret_day["markers"], environ["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"])
        == (secret_day["markers"])
    )
    key_file = Path(environ["GOOGLE_APPLICATION_CREDENTIALS"]).read_text()
    assert contains(secret_day["markers"], key_file) == secret_day["markers"]


def test_no_credential_in_task_logs(secret_day, observe):
    observe.area = "secrets"
    markers = secret_day["markers"]
    log = secret_day["log"]
    # The log is the task logs: every task ran and said so.
    for task in (
        "resolve_run",
        "stage_manifest",
        "embed",
        "wait",
        "validate",
        "analyse",
        "summarise",
    ):
        assert task in log
    assert "Running command:" in log
    log_files = [path for path in (secret_day["home"] / "logs").rglob("*") if path.is_file()]
    found = contains(markers, log) + [
        f"{path}: {marker}" for path in log_files for marker in contains(markers, path.read_bytes())
    ]
    observe.secrets_searched += 1 + len(log_files)
    observe.leaks += len(found)
    assert found == []


def test_no_credential_in_xcom_or_rendered_templates(secret_day, observe):
    observe.area = "secrets"
    markers = secret_day["markers"]
    rows = Counter()
    found = []
    for table, row in database_rows(secret_day["home"] / "airflow.db"):
        rows[table] += 1
        found += [f"{table}: {marker}" for marker in contains(markers, row)]
    observe.secrets_searched += sum(rows.values())
    observe.leaks += len(found)
    # What was searched holds what the run passed around: the staged manifest, the plan.
    assert rows["xcom"] >= 6 and rows["rendered_task_instance_fields"] >= 6, rows
    xcoms = [
        row for table, row in database_rows(secret_day["home"] / "airflow.db") if table == "xcom"
    ]
    assert any("manifest.txt" in str(row) for row in xcoms)
    assert found == []


def test_no_credential_in_the_day_outputs(secret_day, observe):
    observe.area = "secrets"
    files = [path for path in secret_day["output"].rglob("*") if path.is_file()]
    assert {"manifest.txt", "_SUCCESS", "validation.json"} <= {path.name for path in files}
    found = [
        f"{path.name}: {marker}"
        for path in files
        for marker in contains(secret_day["markers"], path.read_bytes())
    ]
    observe.secrets_searched += len(files)
    observe.leaks += len(found)
    assert found == []


# --- .env.example -----------------------------------------------------------------------------

# What a real credential looks like; tests/test_compose.py also refuses a few known prefixes.
KEY_PATTERNS = {
    "private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "Google API key": re.compile(r"AIza[0-9A-Za-z_-]{35}"),
    "OAuth access token": re.compile(r"ya29\.[0-9A-Za-z_-]{20,}"),
    "AWS access key": re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),
    "GitHub token": re.compile(r"\bgh[pousr]_[A-Za-z0-9]{36}\b"),
    "key file field": re.compile(r'"(?:private_key|private_key_id|client_secret)"\s*:'),
    "hex secret": re.compile(r"\b[0-9a-fA-F]{32,}\b"),
}
# Long runs of key alphabet characters with little repetition: random keys, Fernet keys, tokens.
TOKEN = re.compile(r"[A-Za-z0-9+_-]{24,}={0,2}")
MIN_ENTROPY_BITS = 4.0
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL|PRIVATE", re.IGNORECASE)
PLACEHOLDER = re.compile(r"^$|change-?me|your-|example|<[^>]+>", re.IGNORECASE)


def entropy(text: str) -> float:
    """Shannon entropy of a string's characters, in bits per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log2(n / len(text)) for n in counts.values())


def key_like(text: str) -> list[str]:
    """Every string in `text` that looks like a credential, and why."""
    found = [
        f"{kind}: {m[0]}" for kind, pattern in KEY_PATTERNS.items() for m in pattern.finditer(text)
    ]
    found += [
        f"random-looking token: {m[0]}"
        for m in TOKEN.finditer(text)
        if entropy(m[0]) >= MIN_ENTROPY_BITS
        and re.search(r"\d", m[0])
        and not re.fullmatch(r"[A-Z0-9_]+=*", m[0])  # a variable name, not a value
    ]
    return found


def test_the_key_scan_finds_planted_keys():
    planted = [
        "-----BEGIN RSA PRIVATE KEY-----",
        "AIza" + "Sy" + "B" * 33,
        "AKIA" + "ABCDEFGHIJKLMNOP",
        '{"private_key": "x"}',
        secrets.token_urlsafe(32),  # the shape of a Fernet key or an API token
        secrets.token_hex(20),
    ]
    for value in planted:
        assert key_like(f"SOME_SETTING={value}\n"), value
    assert (
        key_like("IMAGE_EMBEDDINGS_DATAFLOW_SDK_CONTAINER_IMAGE=europe-west1-docker.pkg.dev") == []
    )


def test_env_example_holds_no_key_like_string(observe):
    observe.area = "secrets"
    text = ENV_EXAMPLE.read_text()
    found = key_like(text)
    observe.secrets_searched += 1
    observe.leaks += len(found)
    assert found == []


def test_env_example_secret_settings_are_placeholders():
    entries = env_example_entries()
    secret_settings = {name: values for name, values in entries.items() if SECRET_NAME.search(name)}
    assert "_AIRFLOW_WWW_USER_PASSWORD" in secret_settings
    for name, values in secret_settings.items():
        for value in values:
            assert PLACEHOLDER.search(Path(value).name if "/" in value else value), (name, value)


# --- pickle -----------------------------------------------------------------------------------

PICKLE_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib"}


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else ""


def _is_round_trip(call: ast.Call) -> bool:
    """`pickle.loads(pickle.dumps(x))`: an object copied in memory, no file read."""
    return bool(call.args) and _dotted(getattr(call.args[0], "func", ast.Name(""))).endswith(
        "dumps"
    )


def pickle_reads(source: str) -> list[str]:
    """Calls in `source` that could read a file with pickle, as `line: call`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        keywords = {k.arg: k.value for k in node.keywords}
        allow = keywords.get("allow_pickle")
        module, _, function = name.rpartition(".")
        if module in PICKLE_MODULES and function in ("load", "loads") and not _is_round_trip(node):
            found.append(f"{node.lineno}: {name}")
        if isinstance(allow, ast.Constant) and allow.value is True:
            found.append(f"{node.lineno}: {name}(allow_pickle=True)")
        elif name in ("np.load", "numpy.load") and not (
            isinstance(allow, ast.Constant) and allow.value is False
        ):
            found.append(f"{node.lineno}: {name} without allow_pickle=False")
        if function == "read_pickle":
            found.append(f"{node.lineno}: {name}")
    return found


def test_the_pickle_scan_finds_pickle_reads():
    source = """
import pickle, numpy as np, pandas as pd
pickle.load(open("a", "rb"))
pickle.loads(data)
np.load("pca.npz")
np.load("pca.npz", allow_pickle=True)
pd.read_pickle("x")
copy = pickle.loads(pickle.dumps(error))
np.load("pca.npz", allow_pickle=False)
"""
    assert pickle_reads(source) == [
        "3: pickle.load",
        "4: pickle.loads",
        "5: np.load without allow_pickle=False",
        "6: np.load(allow_pickle=True)",
        "7: pd.read_pickle",
    ]


def test_no_output_is_read_with_pickle(observe):
    observe.area = "secrets"
    files = [
        path
        for folder in CODE_FOLDERS
        for path in (REPO / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    ]
    found = [
        f"{path.relative_to(REPO)}:{hit}"
        for path in files
        for hit in pickle_reads(path.read_text())
    ]
    observe.secrets_searched += len(files)
    assert len(files) > 30
    assert found == []

"""The deployment files: docker-compose.yaml, .env.example, the two Dockerfiles, .dockerignore.

No Docker engine or Compose client is needed: the files are parsed as compose and Docker would
read them, and the compose file is validated against the Compose Specification's JSON schema.
"""

from __future__ import annotations

import copy
import json
import re
import shlex
from pathlib import PurePosixPath

import pytest

from image_embeddings_airflow.dag.launch import launch
from image_embeddings_airflow.dag.params import resolve_plan
from image_embeddings_airflow.settings import SETTINGS, load_settings, validate_dataflow
from tests.compose import (
    AIRFLOW_DOCKERFILE,
    ENV_EXAMPLE,
    REPO,
    WORKER_DOCKERFILE,
    compose_errors,
    compose_variables,
    dockerignore_excludes,
    env_example_active,
    env_example_entries,
    instructions_of,
    load_compose,
    lock_pins,
    normalise,
    pins_in,
    pip_install_targets,
)

PYTHON = "3.11"
AIRFLOW_SERVICES = (
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
)
LONG_RUNNING = ("postgres", *AIRFLOW_SERVICES, "gcs-emulator")
ONE_OFF = ("airflow-init", "gcs-seed")
IMAGE_SERVICES = (*AIRFLOW_SERVICES, "airflow-init", "airflow-cli", "gcs-emulator", "gcs-seed")
EMULATOR_PROFILE = "gcs-emulator"
EMULATOR_SECTION = "# GCS emulator"
WORKER_PACKAGES = (
    "tensorflow-cpu",
    "keras",
    "pillow",
    "numpy",
    "pyarrow",
    "openvino",
    # The analysis job.
    "scikit-learn",
    "faiss-cpu",
    "duckdb",
    "matplotlib",
    "plotly",
)
CONTAINER_ROOT = "/opt/airflow"


@pytest.fixture(scope="module")
def services() -> dict:
    return load_compose()["services"]


def mounts(service: dict) -> dict[str, str]:
    """Container path -> host source of a service's short-syntax volumes."""
    found = {}
    for volume in service.get("volumes", []):
        # A `${VAR:-default}` source holds a colon of its own.
        match = re.fullmatch(r"((?:\$\{[^}]*\}|[^:])+):([^:]+)(?::[a-z,]+)?", volume)
        assert match, f"unexpected volume syntax {volume!r}"
        found[match.group(2)] = match.group(1)
    return found


def script(service: dict) -> str:
    """A service's entrypoint and command as one text."""
    parts = []
    for key in ("entrypoint", "command"):
        value = service.get(key, [])
        parts.extend([value] if isinstance(value, str) else value)
    return " ".join(str(part) for part in parts)


def interpolation_default(text: str) -> str:
    """The default of a `${VAR:-default}` expression."""
    match = re.fullmatch(r"\$\{[A-Za-z_]\w*:-([^}]*)\}", text)
    assert match, f"expected ${{VAR:-default}}, got {text!r}"
    return match.group(1)


def emulator_section_env() -> dict[str, str]:
    """What a .env holds once the emulator section of .env.example is uncommented."""
    lines = ENV_EXAMPLE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(EMULATOR_SECTION))
    env = env_example_active()
    for line in lines[start:]:
        match = re.match(r"^# ([A-Za-z_]\w*)=(.*)$", line)
        if match:
            env[match.group(1)] = match.group(2).strip().strip("'")
    return env


def copy_sources(dockerfile) -> list[str]:
    """The build-context paths that a Dockerfile's COPY instructions read."""
    sources = []
    for arguments in instructions_of(dockerfile, "COPY"):
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        sources.extend(words[:-1])
    return sources


def copy_destination(dockerfile, source: str) -> str:
    for arguments in instructions_of(dockerfile, "COPY"):
        words = [word for word in shlex.split(arguments) if not word.startswith("--")]
        if source in words[:-1]:
            return words[-1]
    raise AssertionError(f"{dockerfile.name} copies no {source}")


# --- docker-compose.yaml -------------------------------------------------------------------


def test_services_form_a_local_executor_stack(services):
    assert set(services) == {"postgres", *IMAGE_SERVICES}
    assert not [name for name in services if re.search("redis|worker|flower|celery", name)]
    commands = {name: services[name]["command"] for name in AIRFLOW_SERVICES}
    assert commands == {
        "airflow-apiserver": "api-server",
        "airflow-scheduler": "scheduler",
        "airflow-dag-processor": "dag-processor",
        "airflow-triggerer": "triggerer",
    }
    for name in (*AIRFLOW_SERVICES, "airflow-init", "airflow-cli"):
        environment = services[name]["environment"]
        assert environment["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor", name
        assert environment["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith(
            "postgresql+psycopg2://airflow:airflow@postgres/"
        ), name
        # Task processes reach the API server by its service name.
        assert environment["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == (
            "http://airflow-apiserver:8080/execution/"
        )


def test_the_project_image_runs_every_service_but_postgres(services):
    assert services["postgres"]["image"].startswith("postgres:")
    images = set()
    for name in IMAGE_SERVICES:
        build = services[name]["build"]
        assert (build["context"], build["dockerfile"]) == (".", "Dockerfile"), name
        images.add(services[name]["image"])
    assert len(images) == 1
    assert (REPO / "Dockerfile").is_file()


def test_code_and_data_are_mounted_where_python_imports_them(services):
    for name in (*AIRFLOW_SERVICES, "airflow-init", "airflow-cli"):
        service = services[name]
        found = mounts(service)
        for folder in ("dags", "plugins", "beam_jobs"):
            assert found.get(f"{CONTAINER_ROOT}/{folder}") == f"./{folder}", (name, folder)
            assert (REPO / folder).is_dir()
        data = f"{CONTAINER_ROOT}/data"
        assert interpolation_default(found[data]) == "./data", name
        environment = service["environment"]
        assert environment["IMAGE_EMBEDDINGS_DATA"] == data
        # `python -m beam_jobs.image_embeddings` needs the folder holding beam_jobs/ on the path.
        assert CONTAINER_ROOT in environment["PYTHONPATH"].split(":"), name
        assert str(PurePosixPath(environment["KERAS_HOME"]).parent) == CONTAINER_ROOT
        assert environment["KERAS_HOME"] in found, "the Keras cache lives on a volume"


def test_every_component_shares_one_config_and_the_logs(services):
    volumes = set(load_compose()["volumes"])
    for name in (*AIRFLOW_SERVICES, "airflow-init"):
        environment = services[name]["environment"]
        config_dir = str(PurePosixPath(environment["AIRFLOW_CONFIG"]).parent)
        found = mounts(services[name])
        # Generated once by airflow-init: the JWT secret and Fernet key must match everywhere.
        assert found[config_dir] in volumes, name
        passwords = environment["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE"]
        assert passwords.startswith(config_dir + "/")
        # The API server shows the logs that tasks write in the scheduler's container.
        assert found[f"{CONTAINER_ROOT}/logs"] in volumes, name


def test_every_long_running_service_has_a_health_check(services):
    for name in LONG_RUNNING:
        service = services[name]
        check = service["healthcheck"]
        assert check["test"] and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert check["interval"] and check["retries"], name
        assert service["restart"] == "always", name
    assert (
        "http://localhost:8080/api/v2/monitor/health"
        in services["airflow-apiserver"]["healthcheck"]["test"]
    )
    assert "http://localhost:8974/health" in services["airflow-scheduler"]["healthcheck"]["test"]
    assert services["airflow-scheduler"]["environment"]["AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK"]
    assert "DagProcessorJob" in str(services["airflow-dag-processor"]["healthcheck"]["test"])
    assert "TriggererJob" in str(services["airflow-triggerer"]["healthcheck"]["test"])


def test_one_off_services_run_once(services):
    for name in ONE_OFF:
        assert services[name]["restart"] == "no", name
        assert "healthcheck" not in services[name], name


def test_services_start_in_order(services):
    for name in AIRFLOW_SERVICES:
        depends_on = services[name]["depends_on"]
        assert depends_on["postgres"]["condition"] == "service_healthy", name
        assert depends_on["airflow-init"]["condition"] == "service_completed_successfully", name
    assert services["airflow-init"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    seed = services["airflow-scheduler"]["depends_on"]["gcs-seed"]
    assert seed == {"condition": "service_completed_successfully", "required": False}
    assert services["gcs-seed"]["depends_on"]["gcs-emulator"]["condition"] == "service_healthy"
    emulator = services["gcs-emulator"]["depends_on"]["airflow-init"]
    assert emulator["condition"] == "service_completed_successfully"

    for name, service in services.items():
        for target, rule in service.get("depends_on", {}).items():
            assert target in services, (name, target)
            if rule["condition"] == "service_healthy":
                assert "healthcheck" in services[target], (name, target)
            # A service that always starts may only lean on a profile's service optionally.
            if services[target].get("profiles") and not service.get("profiles"):
                assert rule.get("required") is False, (name, target)


def test_init_migrates_and_sets_the_admin_login(services):
    init = services["airflow-init"]
    text = script(init)
    assert init["user"] == "0:0"
    assert "airflow db migrate" in text
    assert "airflow config list" in text
    assert "SIMPLE_AUTH_MANAGER_PASSWORDS_FILE" in text
    assert init["environment"]["_AIRFLOW_WWW_USER_USERNAME"] == (
        "${_AIRFLOW_WWW_USER_USERNAME:-airflow}"
    )
    assert init["environment"]["_AIRFLOW_WWW_USER_PASSWORD"].startswith(
        "${_AIRFLOW_WWW_USER_PASSWORD"
    )
    for name in AIRFLOW_SERVICES:
        users = services[name]["environment"]["AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS"]
        assert users == "${_AIRFLOW_WWW_USER_USERNAME:-airflow}:admin"


def test_settings_and_connection_come_from_the_env_file(services):
    for name in (*AIRFLOW_SERVICES, "airflow-init", "airflow-cli"):
        service = services[name]
        assert service["env_file"] == [{"path": "${ENV_FILE_PATH:-.env}", "required": False}]
        # `environment` beats the env file: nothing of the user's may be pinned there.
        pinned = [
            key
            for key in service["environment"]
            if key.startswith(("AIRFLOW_CONN_", "IMAGE_EMBEDDINGS_", "STORAGE_EMULATOR"))
        ]
        assert pinned == ["IMAGE_EMBEDDINGS_DATA"], name


def test_gcs_emulator_profile(services):
    profiled = {name for name, service in services.items() if service.get("profiles")}
    assert profiled == {"gcs-emulator", "gcs-seed", "airflow-cli"}
    emulator, seed = services["gcs-emulator"], services["gcs-seed"]
    assert emulator["profiles"] == seed["profiles"] == [EMULATOR_PROFILE]
    command = emulator["command"]
    assert "gcp_storage_emulator" in script(emulator) and "start" in command
    assert command[command.index("--host") + 1] == "0.0.0.0"
    port = command[command.index("--port") + 1]
    bucket = interpolation_default(command[command.index("--default-bucket") + 1])
    assert f"http://localhost:{port}/storage/v1/b/" in " ".join(emulator["healthcheck"]["test"])
    assert "gcp-storage-emulator" in lock_pins()

    host = f"http://gcs-emulator:{port}"
    assert seed["environment"]["STORAGE_EMULATOR_HOST"] == host
    env = emulator_section_env()
    assert env["STORAGE_EMULATOR_HOST"] == host
    assert env["COMPOSE_PROFILES"] == EMULATOR_PROFILE
    assert env["IMAGE_EMBEDDINGS_INPUT_ROOT"] == f"gs://{bucket}/images"
    assert env["IMAGE_EMBEDDINGS_OUTPUT_ROOT"] == f"gs://{bucket}/embeddings"
    connection = json.loads(env["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"])
    assert connection["extra"]["is_anonymous"] is True
    # The seed uploads under the prefix that the emulator section's INPUT_ROOT names.
    assert '"images/"' in script(seed)


# --- .env.example ----------------------------------------------------------------------------


def test_every_compose_variable_is_documented():
    missing = sorted(compose_variables() - set(env_example_entries()))
    assert not missing, f"docker-compose.yaml uses variables .env.example omits: {missing}"


def test_every_setting_is_documented_with_its_default():
    entries = env_example_entries()
    missing = [setting.variable for setting in SETTINGS if setting.variable not in entries]
    assert not missing, f".env.example omits settings: {missing}"
    drifted = {
        setting.variable: (setting.default, entries[setting.variable])
        for setting in SETTINGS
        # Defaults written as expressions ($IMAGE_EMBEDDINGS_DATA/..., <repo>/...) read differently
        # in the containers.
        if setting.default
        and not re.search(r"[$<]", setting.default)
        and setting.default not in entries[setting.variable]
    }
    assert not drifted, f".env.example shows other defaults than settings.py: {drifted}"


def test_the_copied_template_runs_locally():
    env = env_example_active()
    settings = load_settings({**env, "IMAGE_EMBEDDINGS_DATA": f"{CONTAINER_ROOT}/data"})
    assert settings.runner == "DirectRunner"
    assert settings.input_root == f"{CONTAINER_ROOT}/data/images"
    assert settings.output_root == f"{CONTAINER_ROOT}/data/embeddings"
    assert json.loads(env["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"])["conn_type"] == (
        "google_cloud_platform"
    )


def test_the_documented_examples_are_valid_settings():
    entries = env_example_entries()
    examples = {name: values[-1] for name, values in entries.items()}
    offline = load_settings(emulator_section_env())
    assert offline.input_root.startswith("gs://") and offline.weights == "random"
    dataflow = load_settings({**examples, "IMAGE_EMBEDDINGS_RUNNER": "DataflowRunner"})
    validate_dataflow(dataflow)
    assert dataflow.dataflow_sdk_container_image.endswith("/image-embeddings-worker:0.1.0")


def test_the_worker_image_setting_launches_dataflow_jobs_on_it():
    examples = {name: values[-1] for name, values in env_example_entries().items()}
    settings = load_settings({**examples, "IMAGE_EMBEDDINGS_RUNNER": "DataflowRunner"})
    plan = resolve_plan(settings, {"date": "2026-11-28"}, None)
    options = launch(plan.as_dict(), "gs://your-bucket/m.txt", "image_embeddings").pipeline_options
    image = examples["IMAGE_EMBEDDINGS_DATAFLOW_SDK_CONTAINER_IMAGE"]
    assert options["sdk_container_image"] == image
    # The image holds Beam and the package: nothing is staged or installed at worker start.
    assert options["sdk_location"] == "container"
    assert "setup_file" not in options


def test_env_example_holds_placeholders_only():
    text = ENV_EXAMPLE.read_text()
    for secret in ("-----BEGIN", "private_key", "keyfile_dict", "ya29.", "AIza"):
        assert secret not in text
    assert set(re.findall(r"gs://([a-z0-9][a-z0-9._-]*)/", text)) <= {
        "your-bucket",
        "image-embeddings",
    }
    projects = set()
    for values in env_example_entries()["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"]:
        projects.add(json.loads(values)["extra"]["project"])
    assert projects == {"your-project", "image-embeddings-local"}
    assert env_example_active()["_AIRFLOW_WWW_USER_PASSWORD"] == "change-me"


# --- Dockerfiles and build context -----------------------------------------------------------


def test_python_version_is_the_projects():
    assert f'requires-python = ">={PYTHON}' in (REPO / "pyproject.toml").read_text()


def test_airflow_image_is_the_official_one_plus_the_lock():
    pins = lock_pins()
    assert instructions_of(AIRFLOW_DOCKERFILE, "FROM") == [
        f"apache/airflow:{pins['apache-airflow']}-python{PYTHON}"
    ]
    # Nothing that docker-compose.yaml mounts is baked in: only the lock is copied.
    assert copy_sources(AIRFLOW_DOCKERFILE) == ["requirements.txt"]
    lock = copy_destination(AIRFLOW_DOCKERFILE, "requirements.txt")
    (install,) = [run for run in instructions_of(AIRFLOW_DOCKERFILE, "RUN") if "pip install" in run]
    assert f"-r {lock}" in install
    assert pip_install_targets(install) == ["apache-airflow==${AIRFLOW_VERSION}"]
    assert not instructions_of(AIRFLOW_DOCKERFILE, "ENTRYPOINT")


def test_worker_image_is_beams_sdk_at_the_locked_version():
    pins = lock_pins()
    assert instructions_of(WORKER_DOCKERFILE, "FROM") == [
        f"apache/beam_python{PYTHON}_sdk:{pins['apache-beam']}"
    ]
    # Dataflow starts the SDK harness through the base image's boot entrypoint.
    assert not instructions_of(WORKER_DOCKERFILE, "ENTRYPOINT")
    assert not instructions_of(WORKER_DOCKERFILE, "CMD")
    environment = " ".join(instructions_of(WORKER_DOCKERFILE, "ENV"))
    assert "RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1" in environment


def test_worker_image_installs_the_locked_versions():
    pins = lock_pins()
    lock = copy_destination(WORKER_DOCKERFILE, "requirements.txt")
    runs = [run for run in instructions_of(WORKER_DOCKERFILE, "RUN") if "pip install" in run]
    (dependencies,) = [run for run in runs if f"--constraint {lock}" in run]
    targets = {
        normalise(re.split(r"[\[<>=!~]", target, maxsplit=1)[0]): target
        for target in pip_install_targets(dependencies)
    }
    assert set(targets) >= {"apache-beam", *WORKER_PACKAGES}
    for name, target in targets.items():
        assert name in pins, f"{name} is not in requirements.txt"
        # Versions come from the lock; a version written here would have to be the same.
        version = re.search(r"==([^\s]+)", target)
        assert version is None or version.group(1) == pins[name], target

    package = copy_destination(WORKER_DOCKERFILE, "beam_jobs")
    (install,) = [run for run in runs if pip_install_targets(run) == [package]]
    assert "--no-deps" in install and "pip check" in install
    # The package's own requirements, which `pip check` holds the image to, match the lock too.
    required = pins_in((REPO / "beam_jobs" / "setup.py").read_text())
    assert set(required) >= set(WORKER_PACKAGES)
    assert {name: pins[name] for name in required} == required


def test_build_contexts_hold_what_the_dockerfiles_copy():
    for dockerfile in (AIRFLOW_DOCKERFILE, WORKER_DOCKERFILE):
        for source in copy_sources(dockerfile):
            assert (REPO / source).exists(), source
            assert not dockerignore_excludes(source), source
    for kept in ("beam_jobs/setup.py", "beam_jobs/image_embeddings/pipeline.py"):
        assert not dockerignore_excludes(kept), kept
    for left_out in (
        "data/images/2026-11-28/photo.jpg",
        ".venv/bin/python",
        ".git/HEAD",
        ".env",
        ".airflow/airflow.db",
        "dags/image_embeddings.py",
        "beam_jobs/image_embeddings/__pycache__/pipeline.cpython-311.pyc",
        "beam_jobs/image_embeddings_beam_jobs.egg-info/PKG-INFO",
        "beam_jobs/build/lib/beam_jobs/__init__.py",
    ):
        assert dockerignore_excludes(left_out), left_out


# --- the Compose Specification ----------------------------------------------------------------


def test_the_compose_file_keeps_the_compose_specification():
    assert compose_errors(load_compose()) == []


def test_services_without_a_profile_form_the_default_stack(services):
    default = {name for name, service in services.items() if not service.get("profiles")}
    assert default == {"postgres", *AIRFLOW_SERVICES, "airflow-init"}


@pytest.mark.parametrize(
    ("break_it", "expected"),
    [
        (
            lambda doc: doc["services"]["postgres"].update(restart_policy="always"),
            "services/postgres",
        ),
        (
            lambda doc: doc["services"]["postgres"].update(ports="5432:5432"),
            "services/postgres/ports",
        ),
        (
            lambda doc: doc["services"]["airflow-init"].update(depends_on=5),
            "services/airflow-init/depends_on",
        ),
        (lambda doc: doc.update(service={}), "(root)"),
    ],
)
def test_a_broken_compose_document_is_refused(break_it, expected):
    document = copy.deepcopy(load_compose())
    break_it(document)

    errors = compose_errors(document)

    assert errors and any(error.startswith(expected) for error in errors), errors

"""Readers for the deployment files (compose file, env template, Dockerfiles, lock, .dockerignore).

They parse what the container tooling would read, so tests can check the files without a Docker
engine.
"""

from __future__ import annotations

import json
import re
import shlex
from importlib.resources import files
from pathlib import Path

import yaml
from jsonschema import Draft202012Validator

REPO = Path(__file__).resolve().parents[1]
COMPOSE_FILE = REPO / "docker-compose.yaml"
ENV_EXAMPLE = REPO / ".env.example"
AIRFLOW_DOCKERFILE = REPO / "Dockerfile"
WORKER_DOCKERFILE = REPO / "beam_jobs" / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
LOCK = REPO / "requirements.txt"

_ENV_LINE = re.compile(r"^#?\s*([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_COMPOSE_VARIABLE = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)")
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;#]+)")


def load_compose() -> dict:
    """The compose file as compose sees it before interpolation (anchors and `<<` merged)."""
    return yaml.safe_load(COMPOSE_FILE.read_text())


def compose_variables() -> set[str]:
    """Names of every `${VAR}` (or `$VAR`) the compose file interpolates; `$$` is a literal `$`."""
    text = "\n".join(
        line for line in COMPOSE_FILE.read_text().splitlines() if not line.lstrip().startswith("#")
    )
    return set(_COMPOSE_VARIABLE.findall(text.replace("$$", "")))


def env_example_entries() -> dict[str, list[str]]:
    """Variable -> every value `.env.example` shows for it, set or commented out, in order."""
    entries: dict[str, list[str]] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        match = _ENV_LINE.match(line.strip())
        if match:
            entries.setdefault(match.group(1), []).append(unquote(match.group(2).strip()))
    return entries


def env_example_active() -> dict[str, str]:
    """The variables `.env.example` sets (uncommented lines), as a copied `.env` would."""
    active: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.startswith("#"):
            continue
        match = _ENV_LINE.match(line.strip())
        if match:
            active[match.group(1)] = unquote(match.group(2).strip())
    return active


def unquote(value: str) -> str:
    """A dotenv value without its surrounding single or double quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, arguments = current.partition(" ")
        instructions.append((keyword.upper(), " ".join(arguments.split())))
        current = ""
    return instructions


def instructions_of(path: Path, keyword: str) -> list[str]:
    return [arguments for name, arguments in dockerfile_instructions(path) if name == keyword]


def normalise(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_pins() -> dict[str, str]:
    """Distribution -> version pinned in requirements.txt."""
    pins = {}
    for line in LOCK.read_text().splitlines():
        match = _PIN.match(line.strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def pins_in(text: str) -> dict[str, str]:
    """Distribution -> version of every quoted `name==version` in a source text."""
    return {
        normalise(name): version
        for name, version in re.findall(
            r"[\"']([A-Za-z0-9][A-Za-z0-9._-]*)==([^\"'\s;]+)[\"']", text
        )
    }


def pip_install_targets(run: str) -> list[str]:
    """The requirement arguments of a `pip install` inside a RUN line (options dropped)."""
    words = shlex.split(run)
    start = next(i for i in range(len(words) - 1) if words[i : i + 2] == ["pip", "install"]) + 2
    targets, skip = [], False
    for word in words[start:]:
        if word in ("&&", ";", "||"):
            break
        if skip:
            skip = False
        elif word in ("-c", "--constraint", "-r", "--requirement"):
            skip = True
        elif not word.startswith("-"):
            targets.append(word)
    return targets


def _dockerignore_regex(pattern: str) -> re.Pattern:
    regex = ""
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            regex, index = regex + "(?:.*/)?", index + 3
        elif pattern.startswith("**", index):
            regex, index = regex + ".*", index + 2
        elif pattern[index] == "*":
            regex, index = regex + "[^/]*", index + 1
        elif pattern[index] == "?":
            regex, index = regex + "[^/]", index + 1
        else:
            regex, index = regex + re.escape(pattern[index]), index + 1
    return re.compile(regex)


def dockerignore_excludes(path: str) -> bool:
    """Whether `.dockerignore` keeps `path` (relative to the repository) out of a build context.

    Docker's rules: patterns apply in order, the last one matching decides, `!` re-includes, and
    a pattern matching a folder applies to everything inside it.
    """
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        include = line.startswith("!")
        regex = _dockerignore_regex(line.lstrip("!").strip("/"))
        if any(regex.fullmatch(candidate) for candidate in candidates):
            excluded = not include
    return excluded


def compose_schema() -> dict:
    """The Compose Specification's JSON schema, as `check-jsonschema` vendors it."""
    schema = files("check_jsonschema.builtin_schemas") / "vendor" / "compose-spec.json"
    return json.loads(schema.read_text(encoding="utf-8"))


def compose_errors(document: dict) -> list[str]:
    """Where and why a compose document breaks the Compose Specification; empty when it keeps it."""
    validator = Draft202012Validator(compose_schema())
    return [
        f"{'/'.join(str(part) for part in error.absolute_path) or '(root)'}: {error.message}"
        for error in sorted(validator.iter_errors(document), key=lambda e: list(e.absolute_path))
    ]

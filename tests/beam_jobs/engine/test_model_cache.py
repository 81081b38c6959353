"""The prepared-model cache: entries are used only when whole, intact and for the right model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from beam_jobs.image_embeddings.contract import join
from beam_jobs.image_embeddings.engine.fingerprint import fingerprint
from beam_jobs.image_embeddings.engine.model_cache import (
    CARD_NAME,
    CacheEntryError,
    check_entry,
    entry_uri,
    local_verified_copy,
    read_card,
    write_entry,
)
from beam_jobs.image_embeddings.storage import io as storage

PARTS = {"model": "mobilenetv3small", "precision": "float32", "engine": "openvino-x"}
FINGERPRINT = fingerprint(PARTS)


@pytest.fixture
def ir_directory(tmp_path) -> Path:
    folder = tmp_path / "ir"
    folder.mkdir()
    (folder / "model.xml").write_text("<net/>")
    (folder / "model.bin").write_bytes(bytes(range(256)) * 40)
    return folder


def write(cache: str, ir_directory: Path) -> str:
    entry = entry_uri(cache, FINGERPRINT)
    write_entry(entry, str(ir_directory), {"fingerprint": FINGERPRINT, "fingerprint_parts": PARTS})
    return entry


@pytest.fixture(params=["local", "gcs"])
def cache(request, tmp_path) -> str:
    if request.param == "local":
        return str(tmp_path / "cache")
    return f"gs://{request.getfixturevalue('gcs_bucket').name}/model_cache"


def test_an_intact_entry_is_used(cache, ir_directory, tmp_path):
    entry = write(cache, ir_directory)
    card = check_entry(entry, FINGERPRINT)
    assert card["fingerprint"] == FINGERPRINT and set(card["files"]) == {"model.xml", "model.bin"}
    copy = tmp_path / "copy"
    copy.mkdir()
    xml = local_verified_copy(entry, card, str(copy))
    assert Path(xml).read_text() == "<net/>"
    assert (copy / "model.bin").read_bytes() == (ir_directory / "model.bin").read_bytes()


def test_a_corrupt_file_is_refused_on_check_and_on_copy(cache, ir_directory, tmp_path):
    entry = write(cache, ir_directory)
    card = read_card(entry)
    storage.write_text(join(entry, "model.bin"), "flipped")
    with pytest.raises(CacheEntryError, match="model.bin is corrupt"):
        check_entry(entry, FINGERPRINT)
    with pytest.raises(CacheEntryError, match="corrupt .* refusing it"):
        local_verified_copy(entry, card, str(tmp_path))


def test_an_entry_for_another_fingerprint_is_refused(cache, ir_directory):
    entry = write(cache, ir_directory)
    with pytest.raises(CacheEntryError, match=f"fingerprint {FINGERPRINT}, not 0123"):
        check_entry(entry, "0123456789abcdef")


def test_an_entry_without_its_card_is_incomplete(cache, ir_directory):
    entry = write(cache, ir_directory)
    storage.delete([join(entry, CARD_NAME)])
    with pytest.raises(CacheEntryError, match="holds no model_card.json"):
        check_entry(entry, FINGERPRINT)


def test_a_card_whose_parts_were_edited_is_refused(tmp_path, ir_directory):
    entry = write(str(tmp_path / "cache"), ir_directory)
    card_path = Path(entry) / CARD_NAME
    card = json.loads(card_path.read_text())
    card["fingerprint_parts"]["precision"] = "int8"
    card_path.write_text(json.dumps(card))
    with pytest.raises(CacheEntryError, match="states fingerprint"):
        read_card(entry)


def test_an_unreadable_card_is_refused(tmp_path, ir_directory):
    entry = write(str(tmp_path / "cache"), ir_directory)
    (Path(entry) / CARD_NAME).write_text("{not json")
    with pytest.raises(CacheEntryError, match="not a readable model card"):
        read_card(entry)

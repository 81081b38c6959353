"""The one `_SUCCESS` reader, through both sides' storage layers."""

import json

import pytest

from beam_jobs.image_embeddings.contract import SUCCESS_MARKER
from beam_jobs.image_embeddings.marker import NoMarker, success_record
from beam_jobs.image_embeddings.storage import io
from image_embeddings_airflow import storage


@pytest.mark.parametrize("files", [io, storage], ids=["beam io", "airflow storage"])
def test_reads_the_record(tmp_path, files):
    (tmp_path / SUCCESS_MARKER).write_text(json.dumps({"images": 3, "embedded": 2, "failed": 1}))
    assert success_record(str(tmp_path), files) == {"images": 3, "embedded": 2, "failed": 1}


@pytest.mark.parametrize("files", [io, storage], ids=["beam io", "airflow storage"])
def test_a_folder_without_marker_says_which_file_is_missing(tmp_path, files):
    with pytest.raises(NoMarker, match=f"{tmp_path}/{SUCCESS_MARKER} is missing"):
        success_record(str(tmp_path), files)

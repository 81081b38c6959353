"""Similarity search end to end: a DirectRunner day, its reduce step's index, the search CLI."""

from __future__ import annotations

import json
import shutil

import pytest

from beam_jobs.image_embeddings.analysis.day_index import write_day_index
from beam_jobs.image_embeddings.analysis.reduction import reduce_dimensions
from beam_jobs.image_embeddings.contract import SUCCESS_MARKER
from beam_jobs.image_embeddings.launcher import run
from beam_jobs.image_embeddings.search.query import main
from tests.image_factory import write_images

pytestmark = pytest.mark.slow

DAY = "2026-11-28"
MODEL = "mobilenetv3small"


@pytest.fixture(scope="module")
def embedded_day(tmp_path_factory):
    """A day of 12 generated images embedded by the real pipeline (random weights), reduced."""
    base = tmp_path_factory.mktemp("search")
    images = write_images(base / "images" / DAY, 12, size=(96, 72))
    manifest = base / "manifest.txt"
    manifest.write_text("".join(f"{path}\n" for path in images))
    output = base / "embeddings" / DAY
    run(
        [
            f"--manifest={manifest}",
            f"--output={output}",
            f"--model={MODEL}",
            "--weights=random",
            "--num_shards=2",
        ]
    )
    reduce_dimensions(str(output), n_components=6, sample_size=100)
    write_day_index(str(output))
    return base, images


def search_lines(capsys, *argv: str) -> tuple[int, list[str], str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out.splitlines(), captured.err


def test_an_images_copy_ranks_first(embedded_day, capsys, tmp_path):
    base, images = embedded_day
    query = tmp_path / "query.jpg"
    shutil.copyfile(images[5], query)

    code, lines, _ = search_lines(
        capsys, "--output_root", str(base / "embeddings"), "--date", DAY,
        "--image", str(query), "--k", "3", "--json",
    )  # fmt: skip

    assert code == 0
    hits = [json.loads(line) for line in lines]
    assert [hit["rank"] for hit in hits] == [1, 2, 3]
    assert hits[0]["uri"] == str(images[5]) and hits[0]["day"] == DAY
    assert hits[0]["similarity"] > 0.999 > hits[1]["similarity"]

    code, lines, _ = search_lines(
        capsys, "--output_root", str(base / "embeddings"), "--date", DAY, "--image", str(query)
    )
    assert code == 0 and len(lines) == 10
    rank, similarity, day, uri = lines[0].split()
    assert (rank, day, uri) == ("1", DAY, str(images[5])) and float(similarity) > 0.999


def test_last_days_are_searched_together(embedded_day, capsys):
    base, images = embedded_day
    shutil.copytree(
        base / "embeddings" / DAY, base / "embeddings" / "2026-11-27", dirs_exist_ok=True
    )

    code, lines, err = search_lines(
        capsys, "--output_root", str(base / "embeddings"), "--date", DAY,
        "--image", str(images[2]), "--k", "2", "--days", "3", "--json",
    )  # fmt: skip

    assert code == 0
    hits = [json.loads(line) for line in lines]
    assert {(hit["day"], hit["uri"]) for hit in hits} == {
        (DAY, str(images[2])),
        ("2026-11-27", str(images[2])),
    }
    assert "2026-11-26 not searched" in err


def test_a_query_under_another_fingerprint_is_refused(embedded_day, capsys, tmp_path):
    base, images = embedded_day
    root = tmp_path / "embeddings"
    shutil.copytree(base / "embeddings" / DAY, root / DAY)
    marker_path = root / DAY / SUCCESS_MARKER
    marker = json.loads(marker_path.read_text())
    marker["model_fingerprint"] = "0" * 16
    marker["fingerprint_parts"]["weights"] = "sha256:" + "1" * 64
    marker_path.write_text(json.dumps(marker))

    code, lines, err = search_lines(
        capsys, "--output_root", str(root), "--date", DAY, "--image", str(images[0])
    )

    assert code == 2 and lines == []
    assert "search refused" in err and "0000000000000000" in err
    assert "weights: 'sha256:111" in err


def test_missing_day_and_bad_query_say_why(embedded_day, capsys, tmp_path):
    base, _ = embedded_day
    root = str(base / "embeddings")

    code, _, err = search_lines(
        capsys, "--output_root", root, "--date", "2026-01-01", "--image", "x"
    )
    assert code == 2 and "has not been embedded" in err

    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    code, _, err = search_lines(capsys, "--output_root", root, "--date", DAY, "--image", str(text))
    assert code == 2 and f"cannot use {text} as the query (decode)" in err

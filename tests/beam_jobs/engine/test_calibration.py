"""The int8 calibration set: seeded, reproducible, disjoint, made of readable images only."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from beam_jobs.image_embeddings.engine.accuracy import (
    AccuracyRefused,
    Thresholds,
    accuracy_figures,
    check_accuracy,
)
from beam_jobs.image_embeddings.engine.calibration import (
    HELD_OUT_SIZE,
    SEED,
    load_calibration_set,
    seeded_order,
    split_sizes,
)
from beam_jobs.image_embeddings.engine.calibration_pin import (
    load_pinned_set,
    pin_uri,
    read_pin,
    write_pin,
)
from tests.image_factory import write_images

SIZE = (16, 20)


@pytest.fixture
def manifest(tmp_path):
    paths = write_images(tmp_path / "images", 14, (40, 30), seed=3)
    broken = tmp_path / "images" / "broken.jpg"
    broken.write_bytes(b"not a jpeg")
    path = tmp_path / "manifest.txt"
    path.write_text("# day\n" + "".join(f"{p}\n" for p in [*paths, broken, paths[0]]))
    return path


def test_the_order_depends_on_the_seed_not_on_the_lines(manifest, tmp_path):
    reversed_manifest = tmp_path / "reversed.txt"
    reversed_manifest.write_text("\n".join(reversed(manifest.read_text().splitlines())))
    assert seeded_order(str(manifest), 7) == seeded_order(str(reversed_manifest), 7)
    assert seeded_order(str(manifest), 7) != seeded_order(str(manifest), 8)
    assert len(seeded_order(str(manifest), 7)) == 15


def test_a_short_day_holds_out_a_third_and_calibrates_on_the_rest():
    assert split_sizes(96, 64, 32) == (64, 32)
    assert split_sizes(576, 64, 512) == (64, 512)
    assert split_sizes(300, 64, 512) == (64, 236)
    assert split_sizes(30, 64, 32) == (20, 10)
    assert split_sizes(12, 64, 32) == (6, 6)
    with pytest.raises(ValueError, match="at least 10 readable images .* found 9"):
        split_sizes(9, 64, 32)


def test_the_same_images_give_the_same_set_and_digest(manifest, caplog):
    with caplog.at_level(logging.WARNING):
        first = load_calibration_set(str(manifest), SIZE, calibration_size=8, held_out_size=7)
    second = load_calibration_set(str(manifest), SIZE, calibration_size=8, held_out_size=7)
    assert first.calibration.shape == (8, *SIZE, 3) and first.held_out.shape == (6, *SIZE, 3)
    assert first.digest == second.digest and first.digest.startswith("sha256:")
    np.testing.assert_array_equal(first.calibration, second.calibration)
    assert "calibration skips" in caplog.text and "broken.jpg (decode:" in caplog.text
    other = load_calibration_set(str(manifest), SIZE, 8, 7, seed=99)
    assert other.digest != first.digest


def test_a_missing_calibration_manifest_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="calibration manifest not found: .*nowhere.txt"):
        load_calibration_set(str(tmp_path / "nowhere.txt"), SIZE)


def test_a_pinned_set_loads_the_same_images_and_refuses_changed_ones(manifest, tmp_path):
    first = load_calibration_set(str(manifest), SIZE, calibration_size=6, held_out_size=6)
    uri = pin_uri(str(tmp_path / "cache"), "version")
    pin = write_pin(uri, first, seed=1729)
    assert read_pin(uri) == pin and read_pin(str(tmp_path / "none.json")) is None
    again = load_pinned_set(pin, SIZE, 1 << 20)
    assert again.digest == first.digest and again.uris == first.uris
    np.testing.assert_array_equal(again.calibration, first.calibration)
    write_images(tmp_path / "other", 1, (40, 30), seed=99)
    Path(first.uris[-1]).write_bytes((tmp_path / "other" / "image-000.jpg").read_bytes())
    with pytest.raises(ValueError, match="pinned on .* have changed"):
        load_pinned_set(pin, SIZE, 1 << 20)
    Path(first.uris[0]).unlink()
    with pytest.raises(ValueError, match="cannot be read: .*image"):
        load_pinned_set(pin, SIZE, 1 << 20)


def test_an_unreadable_pin_says_how_to_calibrate_anew(tmp_path):
    uri = tmp_path / "pin.json"
    uri.write_text('{"digest": "sha256:0"}')
    with pytest.raises(ValueError, match="not a readable calibration pin .*delete it"):
        read_pin(str(uri))


def stray_tail(count: int, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(reference, candidate) embeddings of `count` images that agree closely except on a
    `share` of them, whose centred cosine falls to about 0.8."""
    rng = np.random.default_rng(seed)
    reference = 5.0 + rng.normal(size=(count, 64))
    candidate = reference + rng.normal(scale=0.01, size=reference.shape)
    strays = rng.choice(count, round(count * share), replace=False)
    candidate[strays] += rng.normal(scale=0.75, size=(len(strays), 64))
    return reference, candidate


def refused_share(manifest: Path, held_out: int, embeddings, seeds: range) -> float:
    """How often the guard refuses the candidate on `held_out` images drawn as preparation
    draws them (the first of the manifest's seeded order), over `seeds`."""
    index = {line: row for row, line in enumerate(manifest.read_text().splitlines())}
    refused = 0
    for seed in seeds:
        rows = [index[uri] for uri in seeded_order(str(manifest), seed)[:held_out]]
        figures = accuracy_figures(*(vectors[rows] for vectors in embeddings))
        try:
            check_accuracy(figures, Thresholds())
        except AccuracyRefused:
            refused += 1
    return refused / len(seeds)


def test_the_default_held_out_sample_refuses_a_model_that_strays_on_one_image_in_a_hundred(
    tmp_path,
):
    manifest = tmp_path / "day.txt"
    manifest.write_text("".join(f"gs://day/image-{row:05d}.jpg\n" for row in range(5000)))
    embeddings = stray_tail(5000, share=0.01)
    seeds = range(SEED, SEED + 20)
    assert refused_share(manifest, HELD_OUT_SIZE, embeddings, seeds) >= 0.9
    # The former sample of 32 let most such models through.
    assert refused_share(manifest, 32, embeddings, seeds) < 0.5

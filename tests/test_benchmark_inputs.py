"""The benchmarks' generated inputs keep to the pipeline's contract, so `make bench` runs."""

from __future__ import annotations

import json

from beam_jobs.image_embeddings.contract import embeddings_schema
from benchmarks.daily import write_synthetic_day
from image_embeddings_airflow.dag.validation import validate_output


def test_a_synthetic_day_is_a_valid_day_of_the_current_schema(tmp_path):
    import pyarrow.parquet as pq

    day = write_synthetic_day(tmp_path / "day", rows=20, dim=8)
    report = validate_output(str(day), max_failure_rate=0, expected_dim=8)
    assert report.ok, report.problems
    assert report.counts["embedded"] == 20
    (shard,) = day.glob("embeddings-*.parquet")
    assert pq.read_schema(shard).equals(embeddings_schema(8))


def test_synthetic_days_hold_every_planted_copy_where_the_analysis_finds_it(tmp_path):
    from beam_jobs.image_embeddings.analysis.day_index import write_day_index
    from beam_jobs.image_embeddings.analysis.duplicates import find_duplicates
    from beam_jobs.image_embeddings.analysis.reduction import reduce_dimensions
    from benchmarks import scale, synthetic

    space = synthetic.Space.make(dim=128, clusters=50)
    earlier = {"2026-12-30": 1, "2026-12-29": 2}
    for day, seed in earlier.items():
        synthetic.write_lookback_day(tmp_path / day, space, day, seed, synthetic.SAMPLE_ROWS + 500)
    planted = synthetic.plants(scale.DAY, list(earlier), per_day=2)
    folder = tmp_path / scale.DAY
    synthetic.write_day(folder, space, scale.DAY, 0, 3000, planted, earlier)
    reduce_dimensions(str(folder), 16, 2000)
    write_day_index(str(folder))

    find_duplicates(str(folder), scale.DAY, synthetic.FINGERPRINT, 0.95, 30)

    assert scale.expected(planted) <= scale.found_rows(folder)
    assert len(scale.expected(planted)) == 12


def test_kept_earlier_days_are_reused_only_for_the_same_sizes(tmp_path):
    from benchmarks import scale

    args = scale.parse_args(["--days", "3", "--lookback-rows", "5000"])
    assert scale.kept_lookback(tmp_path, args) is None
    (tmp_path / scale.LOOKBACK_RECORD).write_text(
        json.dumps({**scale.lookback_key(args), "seconds": 12.5})
    )

    assert scale.kept_lookback(tmp_path, args) == 12.5
    for other in (["--days", "4"], ["--lookback-rows", "6000"]):
        assert scale.kept_lookback(tmp_path, scale.parse_args(other)) is None


def test_varied_images_are_every_kind_through_the_loader_and_the_same_by_name():
    import numpy as np

    from benchmarks import varied_images

    names = varied_images.names(dict.fromkeys(varied_images.MIX, 1), 7)
    images = varied_images.load(names, (224, 224))
    assert images.shape == (len(varied_images.MIX), 224, 224, 3) and images.dtype == np.uint8
    assert np.array_equal(varied_images.pixels("grey-7", (224, 224)), images[names.index("grey-7")])
    assert len({image.tobytes() for image in images}) == len(names)


def test_int8_agreement_never_calibrates_on_an_evaluated_image():
    from benchmarks import int8_agreement, varied_images

    evaluated = set(varied_images.names(int8_agreement.scaled_mix(1664), 0))
    for setting in int8_agreement.SETTINGS.values():
        calibration = int8_agreement.calibration_names(setting)
        # The varied mix is scaled by kind, each rounded: about as many images as asked.
        assert abs(len(calibration) - setting["images"]) <= len(varied_images.MIX)
        assert not evaluated & set(calibration)

"""The model fingerprint: stable for equal inputs, changed by anything that changes the values."""

from __future__ import annotations

import hashlib

from beam_jobs.image_embeddings.engine.fingerprint import (
    file_digest,
    fingerprint,
    fingerprint_parts,
    weights_identity,
)
from beam_jobs.image_embeddings.engine.models import resolve_model

RESNET = resolve_model("resnet50")


def test_equal_parts_give_equal_fingerprints_in_any_key_order():
    parts = fingerprint_parts(RESNET, "random", "float32")
    assert fingerprint(parts) == fingerprint(dict(reversed(list(parts.items()))))
    assert len(fingerprint(parts)) == 16


def test_every_part_that_changes_values_changes_the_fingerprint():
    base = fingerprint(fingerprint_parts(RESNET, "random", "float32"))
    others = [
        fingerprint_parts(RESNET, "imagenet", "float32"),
        fingerprint_parts(RESNET, "random", "bfloat16"),
        fingerprint_parts(resolve_model("efficientnetb1"), "random", "float32"),
    ]
    assert len({base, *(fingerprint(parts) for parts in others)}) == 4


def test_a_weights_file_is_named_by_its_content(tmp_path):
    weights = tmp_path / "w.weights.h5"
    weights.write_bytes(b"first")
    first = weights_identity(RESNET, str(weights))
    assert (
        first
        == "sha256:" + hashlib.sha256(b"first").hexdigest()
        == "sha256:" + file_digest(str(weights))
    )
    weights.write_bytes(b"second")
    assert weights_identity(RESNET, str(weights)) != first


def test_named_weights_carry_the_keras_version():
    assert weights_identity(RESNET, "imagenet").startswith("imagenet@keras-3.")


def test_engine_version_and_calibration_set_are_parts_of_the_fingerprint():
    tensorflow = fingerprint_parts(RESNET, "random", "float32")
    openvino = fingerprint_parts(RESNET, "random", "float32", "openvino")
    assert openvino["engine"].startswith("openvino-2") and tensorflow["engine"].startswith(
        "tensorflow-"
    )
    calibrated = [
        fingerprint(fingerprint_parts(RESNET, "random", "int8", "openvino", f"sha256:{digest}"))
        for digest in ("aa", "bb")
    ]
    assert len({fingerprint(tensorflow), fingerprint(openvino), *calibrated}) == 4


def test_how_int8_was_quantized_is_a_part_only_when_given():
    plain = fingerprint_parts(RESNET, "random", "int8", "openvino", "sha256:aa")
    quantized = fingerprint_parts(RESNET, "random", "int8", "openvino", "sha256:aa", "nncf-3.4.0")
    other = fingerprint_parts(RESNET, "random", "int8", "openvino", "sha256:aa", "nncf-3.5.0")
    assert "quantization" not in plain and quantized["quantization"] == "nncf-3.4.0"
    assert len({fingerprint(plain), fingerprint(quantized), fingerprint(other)}) == 3

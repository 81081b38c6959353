"""The embedding engines: models, weights, OpenVINO preparation, int8 guard, fingerprint."""

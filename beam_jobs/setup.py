"""Installs the `beam_jobs.image_embeddings` package and its dependencies on Dataflow workers."""

from pathlib import Path

import setuptools

HERE = Path(__file__).resolve().parent

# The worker's versions of what the pipeline imports, pinned to the repository's lock
# (requirements.txt); Beam itself comes with the worker's SDK container.
WORKER_REQUIREMENTS = [
    "tensorflow-cpu==2.21.0",
    "keras==3.15.1",
    "pillow==12.3.0",
    "pillow-heif==1.8.1",
    "pyarrow==25.0.1",
    "numpy==2.4.6",
    # The default engine; workers only load prepared models, so NNCF stays off them.
    "openvino==2026.4.1",
    # The day's analysis job: PCA, neighbours index, duplicates, drift, the plot and the report.
    "scikit-learn==1.9.1",
    "faiss-cpu==1.15.1",
    "threadpoolctl==3.8.0",
    "duckdb==2.0.1",
    "matplotlib==3.11.2",
    "plotly==7.1.0",
]

setuptools.setup(
    name="image-embeddings-beam-jobs",
    version="0.1.0",
    description="Apache Beam pipeline embedding images with a Keras CNN.",
    python_requires=">=3.11,<3.12",
    # This file sits inside beam_jobs/: the folder it is in is the `beam_jobs` package, so the
    # workers import the same module paths as the launcher (beam_jobs.image_embeddings.*), and
    # every subpackage found under it travels with it.
    package_dir={"beam_jobs": "."},
    packages=["beam_jobs", *(f"beam_jobs.{name}" for name in setuptools.find_packages(HERE))],
    install_requires=WORKER_REQUIREMENTS,
)

"""What staging leaves out of a day's manifest, counted by reason and extension."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from beam_jobs.image_embeddings.contract import SKIPPED_NAME, extension, join

NOT_AN_IMAGE = "not an image by extension"
LINE_BREAK = "name holds a line break"
# A few names of each reason go into the record, so a user can find them; the counts are exact.
EXAMPLES_PER_REASON = 5
NO_EXTENSION = "(none)"


@dataclass
class Skips:
    """Objects under a day's input folder that are not in its manifest, and why."""

    by_reason: dict[str, Counter] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, uri: str) -> None:
        self.by_reason.setdefault(reason, Counter())[extension(uri) or NO_EXTENSION] += 1
        examples = self.examples.setdefault(reason, [])
        if len(examples) < EXAMPLES_PER_REASON:
            examples.append(uri)

    @property
    def total(self) -> int:
        return sum(sum(counts.values()) for counts in self.by_reason.values())

    def by_extension(self) -> Counter:
        return sum(self.by_reason.values(), Counter())

    def summary(self) -> str:
        """`skipped 3: .txt 2, .json 1 (not an image by extension 3)`, or `skipped 0`."""
        if not self.total:
            return "skipped 0"
        extensions = ", ".join(f"{ext} {n}" for ext, n in _ranked(self.by_extension()))
        reasons = ", ".join(
            f"{reason} {sum(counts.values())}" for reason, counts in sorted(self.by_reason.items())
        )
        return f"skipped {self.total}: {extensions} ({reasons})"

    def to_dict(self) -> dict[str, Any]:
        return {
            "total": self.total,
            "by_reason": {
                reason: dict(_ranked(counts)) for reason, counts in sorted(self.by_reason.items())
            },
            "by_extension": dict(_ranked(self.by_extension())),
            "examples": dict(sorted(self.examples.items())),
        }


def _ranked(counts: Counter) -> list[tuple[str, int]]:
    """Most frequent first, then by name: the order a reader scans a tally in."""
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))


def skipped_uri(output_dir: str) -> str:
    return join(output_dir, SKIPPED_NAME)


def read_skips(output_dir: str) -> dict[str, Any] | None:
    """The day's skip record as staging wrote it; None when there is none (staged before it)."""
    from image_embeddings_airflow import storage

    uri = skipped_uri(output_dir)
    return storage.read_json(uri) if storage.exists(uri) else None

"""The preview pairs' sampling split: Cycles' own elapsed times, read from `blender -b`'s output."""

from __future__ import annotations

from bench.preview import sampling_seconds

OUTPUT = """\
Fra:1 Mem:10.01M (Peak 11.05M) | Time:00:00.01 | Mem:0.00M, Peak:0.00M | Scene, ViewLayer | Synchronizing object | rug
Fra:1 Mem:10.48M (Peak 11.05M) | Time:00:00.08 | Mem:0.92M, Peak:0.92M | Scene, ViewLayer | Sample 0/16
Fra:1 Mem:18.40M | Time:00:00.33 | Remaining:00:03.86 | Mem:8.83M, Peak:8.83M | Scene, ViewLayer | Sample 1/16
Fra:1 Mem:21.92M (Peak 28.95M) | Time:00:03.43 | Mem:8.83M, Peak:8.83M | Scene, ViewLayer | Sample 16/16
Fra:1 Mem:21.92M (Peak 28.95M) | Time:00:03.43 | Mem:8.83M, Peak:8.83M | Scene, ViewLayer | Finished
 Time: 00:03.72 (Saving: 00:00.28)
"""


def test_sampling_runs_from_the_first_sample_line_to_the_last() -> None:
    assert sampling_seconds(OUTPUT) == 3.43 - 0.08


def test_hours_and_minutes_count() -> None:
    out = (
        "Fra:1 | Time:00:59.50 | Scene, ViewLayer | Sample 0/4\n"
        "Fra:1 | Time:01:00:01.50 | Scene, ViewLayer | Sample 4/4\n"
    )
    assert sampling_seconds(out) == 3600 + 1.5 - 59.5


def test_no_sample_lines_is_none() -> None:
    assert sampling_seconds("Blender quit\n") is None
    assert sampling_seconds("Fra:1 | Time:00:00.08 | Scene, ViewLayer | Sample 0/16\n") is None

"""The job summary's Mermaid charts parse with the real mermaid parser whatever the
values and metric names are: tiny and huge values (which Python prints as 4e-05 and
1.23457e+06), infinities and NaN, and names with quotes or line breaks."""

from __future__ import annotations

import math

import pytest

from rollout.integrations.github import chart, mermaid_label, mermaid_number
from rollout.state import MeasurementRecord
from tests.github import mermaid

pytestmark = pytest.mark.timeout(180)

AWKWARD = [4e-05, 1.23457e06, 1e-300, 123456789012.0, -2.5e-07, 0.0, -0.0, 0.1 + 0.2, 7.0, -1e21]


def _points(values: list[float], version: str = "v2", stable: list[float] | None = None) -> list[MeasurementRecord]:
    return [MeasurementRecord(metric="m", step_index=i // 3, tick=i % 3, at=float(i), version=version, status="value",
                              value=v, stable_value=None if stable is None else stable[i], verdict="pass")
            for i, v in enumerate(values)]


@pytest.mark.parametrize("value", AWKWARD)
def test_numbers_are_plain_decimals_of_the_same_value(value: float) -> None:
    text = mermaid_number(value)
    assert "e" not in text.lower() and "inf" not in text and "nan" not in text
    assert math.isclose(float(text), float(f"{value:.6g}"), rel_tol=1e-12, abs_tol=1e-300)


def test_non_finite_values_are_left_out_of_the_chart_not_printed() -> None:
    block = chart("latency", _points([1.0, math.inf, 2.0, math.nan, -math.inf]), [])
    assert block is not None
    assert "line [1, 2]" in block and '"s1.1", "s1.3"' in block
    assert chart("latency", _points([math.inf, math.nan]), []) is None


def test_labels_cannot_end_the_string_or_the_statement() -> None:
    assert '"' not in mermaid_label('p99 "fast" path')
    assert "\n" not in mermaid_label("two\nlines")


def test_every_chart_parses_with_the_real_mermaid_parser() -> None:
    names = ["error-rate", 'latency "p99"', "ratio [a, b]", "odd\nname", "50% slow; 'quoted'", "a#b"]
    blocks = []
    for name in names:
        for values, stable in ((AWKWARD, None), (AWKWARD, list(reversed(AWKWARD))),
                               ([math.inf, 1.0, math.nan, 2e-9, 3.5e9, 1.0, 2.0, 3.0, 4.0], None)):
            block = chart(name, _points(values, stable=stable), [])
            assert block is not None
            blocks += mermaid.blocks(block)
    # what the old formatting printed, to show the parser is not lenient
    blocks.append('xychart-beta\n    title "x"\n    x-axis ["s1.1", "s1.2"]\n    y-axis "x"\n    line [1, 4e-05]')
    results = mermaid.parse(blocks)
    *ours, old = results
    assert old["ok"] is False
    bad = [(b, r["error"]) for b, r in zip(blocks, ours) if not r["ok"]]
    assert bad == []
    assert all(r["type"] == "xychart" for r in ours)

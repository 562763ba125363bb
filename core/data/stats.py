"""Token-length report: percentiles per source, rows over the limit, and the plotly histogram."""

from __future__ import annotations

import math

PERCENTILES = (50, 90, 95, 99)
TRUNCATION_WARNING = ("Truncating cuts the end off long rows: a reasoning trace loses its conclusion and "
                      "the final answer, which teaches the model to stop mid-thought. Prefer dropping "
                      "them or raising max_seq_len.")


def percentile(sorted_values: list[int], q: float) -> int:
    """Nearest-rank percentile of already sorted values (0 for none)."""
    if not sorted_values:
        return 0
    rank = max(1, math.ceil(q / 100 * len(sorted_values)))
    return sorted_values[rank - 1]


def length_stats(lengths: list[int], max_len: int) -> dict:
    values = sorted(lengths)
    out = {"rows": len(values), "mean": round(sum(values) / len(values), 1) if values else 0.0,
           "min": values[0] if values else 0, "max": values[-1] if values else 0}
    for q in PERCENTILES:
        out[f"p{q}"] = percentile(values, q)
    out["over_max"] = len(values) - _count_at_most(values, max_len)
    out["max_seq_len"] = max_len
    return out


def _count_at_most(sorted_values: list[int], limit: int) -> int:
    import bisect

    return bisect.bisect_right(sorted_values, limit)


def histogram_figure(lengths: dict[str, list[int]], max_len: int, title: str = "Token length per source",
                     line_label: str = "max_seq_len"):
    """Overlaid per-source histograms with a vertical line at ``max_len``; the legend tells how many
    rows of each source exceed it."""
    import plotly.graph_objects as go

    fig = go.Figure()
    top = max([max(v) for v in lengths.values() if v] + [max_len])
    size = max(1, math.ceil(top * 1.05 / 60))
    for name, values in lengths.items():
        over = sum(1 for v in values if v > max_len)
        fig.add_trace(go.Histogram(x=values, name=f"{name} ({over} over)", opacity=0.6,
                                   xbins={"start": 0, "end": top + size, "size": size}))
    fig.add_vline(x=max_len, line_dash="dash", line_color="red",
                  annotation_text=f"{line_label} = {max_len}", annotation_position="top")
    fig.update_layout(barmode="overlay", title=title, xaxis_title="tokens", yaxis_title="rows",
                      legend_title_text="source (rows over the limit)", height=360,
                      margin={"l": 40, "r": 20, "t": 50, "b": 40})
    return fig

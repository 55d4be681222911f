"""Results: samples per workload, metric and server; a table of medians and ratios; JSON.

The ratio is always ours / Distribution. Whether that is good depends on the metric: for
throughput (`better="higher"`) the target is a ratio of at least 1.0, for latency, memory and
CPU (`better="lower"`) at most 1.0. Ceiling columns say how close our median gets to the
machine's limit for that work (from `bench.limits`).
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SIDES = ("ours", "distribution")


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    unit: str
    better: str = "higher"  # or "lower"
    # Keys of the limits, for "% of ceiling": the first is the metric's ceiling, any others
    # are shown next to it (e.g. the disk, for pushes that also have to reach it).
    ceiling: str | tuple[str, ...] | None = None
    target: bool = True  # compared against Distribution (False: informational)
    limit: float | None = None  # an absolute target instead: our median at most this
    goal: float | None = None  # the ratio to reach, when not 1.0 (e.g. 0.5: twice as fast)


@dataclass
class Results:
    settings: dict[str, Any]
    machine: dict[str, Any]
    limits: dict[str, float] | None = None
    # workload -> metric key -> side -> samples
    samples: dict[str, dict[str, dict[str, list[float]]]] = field(default_factory=dict)
    metrics: dict[str, list[Metric]] = field(default_factory=dict)
    titles: dict[str, str] = field(default_factory=dict)
    notes: dict[str, list[str]] = field(default_factory=dict)
    # workload -> the same workload without auth, to show what auth costs each server
    baselines: dict[str, str] = field(default_factory=dict)

    def add(self, workload: str, side: str, values: dict[str, float]) -> None:
        per_metric = self.samples.setdefault(workload, {})
        for key, value in values.items():
            per_metric.setdefault(key, {s: [] for s in SIDES})[side].append(float(value))

    def note(self, workload: str, text: str) -> None:
        self.notes.setdefault(workload, []).append(text)


def _names(ceiling: str | tuple[str, ...] | None) -> tuple[str, ...]:
    if ceiling is None:
        return ()
    return (ceiling,) if isinstance(ceiling, str) else ceiling


CEILING_NAMES = {
    "sha256_one_core_mbps": "SHA-256",
    "sha256_all_cores_mbps": "SHA-256 x cores",
    "disk_write_fsync_mbps": "disk+fsync",
    "loopback_tcp_mbps": "loopback",
    "loopback_sendfile_mbps": "loopback sendfile",
    "push_pipeline_mbps": "push pipeline",
    "s3_put_mbps": "S3 put",
    "s3_multipart_put_mbps": "S3 multipart put",
    "s3_get_mbps": "S3 get",
    "s3_ranged_get_mbps": "S3 4 ranged gets",
}


def median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def ratio(ours: float | None, theirs: float | None) -> float | None:
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def meets(metric: Metric, ratio_value: float | None, ours: float | None) -> bool | None:
    if metric.limit is not None:
        return None if ours is None else ours <= metric.limit
    if ratio_value is None or not metric.target:
        return None
    goal = metric.goal if metric.goal is not None else 1.0
    return ratio_value >= goal if metric.better == "higher" else ratio_value <= goal


def summarize(results: Results) -> dict[str, Any]:
    """The JSON document: settings, machine, limits, and per workload each metric's figures."""
    workloads: dict[str, Any] = {}
    for workload, per_metric in results.samples.items():
        specs = {m.key: m for m in results.metrics.get(workload, [])}
        out: dict[str, Any] = {}
        ordered = [k for k in specs if k in per_metric] + [k for k in per_metric if k not in specs]
        for key in ordered:
            sides = per_metric[key]
            spec = specs.get(key) or Metric(key, key, "", target=False)
            ours, theirs = median(sides["ours"]), median(sides["distribution"])
            r = ratio(ours, theirs)
            entry: dict[str, Any] = {
                "label": spec.label,
                "unit": spec.unit,
                "better": spec.better,
                "ours": {"samples": sides["ours"], "median": ours},
                "distribution": {"samples": sides["distribution"], "median": theirs},
                "ratio": r,
                "meets_target": meets(spec, r, ours),
            }
            if spec.limit is not None:
                entry["limit"] = spec.limit
            ceilings = [
                {
                    "name": name,
                    "value": limit,
                    "ours_fraction": ours / limit if ours is not None else None,
                    "distribution_fraction": theirs / limit if theirs is not None else None,
                }
                for name in _names(spec.ceiling)
                if (limit := (results.limits or {}).get(name))
            ]
            if ceilings:
                entry["ceiling"] = ceilings[0]
                if len(ceilings) > 1:
                    entry["other_ceilings"] = ceilings[1:]
            out[key] = entry
        workloads[workload] = {
            "title": results.titles.get(workload, workload),
            "metrics": out,
            "notes": results.notes.get(workload, []),
        }
        against = _versus_baseline(results, workload)
        if against is not None:
            workloads[workload]["versus_baseline"] = against
    overall: dict[str, Any] = {}
    for side in SIDES:
        overall[side] = {}
        for key in ("peak_rss_mib", "peak_process_rss_mib"):
            peaks = [
                v
                for per_metric in results.samples.values()
                for v in per_metric.get(key, {}).get(side, [])
            ]
            overall[side][key] = max(peaks) if peaks else None
    return {
        "version": 1,
        "overall": overall,
        "settings": results.settings,
        "machine": results.machine,
        "limits": results.limits,
        "workloads": workloads,
    }


# With token auth on, requests/s at least this fraction of the same workload without auth.
AUTH_TARGET = 0.85
BASELINE_METRICS = ("rps", "cpu_us_per_request")


def _versus_baseline(results: Results, workload: str) -> dict[str, Any] | None:
    """Each side's median with auth over its median without, for `BASELINE_METRICS`."""
    baseline = results.baselines.get(workload)
    if baseline is None or baseline not in results.samples:
        return None
    out: dict[str, Any] = {"baseline": baseline}
    for key in BASELINE_METRICS:
        with_auth = results.samples[workload].get(key, {})
        without = results.samples[baseline].get(key, {})
        out[key] = {
            side: ratio(median(with_auth.get(side, [])), median(without.get(side, [])))
            for side in SIDES
        }
    ours_rps = out["rps"]["ours"]
    out["meets_target"] = None if ours_rps is None else ours_rps >= AUTH_TARGET
    return out


def _fmt(value: float | None, unit: str = "") -> str:
    if value is None:
        return "-"
    if unit in ("ms",) and value < 10:
        return f"{value:.2f}"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(summary: dict[str, Any]) -> str:
    """A plain-text table: one row per workload and metric."""
    header = ("workload", "metric", "ours", "distribution", "ratio", "ok", "ours/ceiling")
    rows: list[tuple[str, ...]] = []
    for name, workload in summary["workloads"].items():
        first = True
        for _key, m in workload["metrics"].items():
            ok = {True: "yes", False: "NO", None: ""}[m["meets_target"]]
            ceiling_text = "; ".join(
                f"{c['ours_fraction'] * 100:.0f}% of {CEILING_NAMES.get(c['name'], c['name'])}"
                f" {c['value']:,.0f}"
                for c in [m.get("ceiling"), *m.get("other_ceilings", [])]
                if c and c.get("ours_fraction") is not None
            )
            rows.append(
                (
                    name if first else "",
                    f"{m['label']} ({m['unit']})" if m["unit"] else m["label"],
                    _fmt(m["ours"]["median"], m["unit"]),
                    _fmt(m["distribution"]["median"], m["unit"]),
                    "-" if m["ratio"] is None else f"{m['ratio']:.2f}x",
                    ok,
                    ceiling_text,
                )
            )
            first = False
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = []
    for index, row in enumerate([header, *rows]):
        cells = [
            cell.ljust(widths[i]) if i < 2 else cell.rjust(widths[i]) for i, cell in enumerate(row)
        ]
        lines.append("  ".join(cells).rstrip())
        if index == 0:
            lines.append("  ".join("-" * w for w in widths))
    overall = summary.get("overall", {})
    if overall:
        peaks = ", ".join(
            f"{side} {_fmt(overall[side]['peak_rss_mib'])} MiB" for side in SIDES if side in overall
        )
        lines += ["", f"peak RSS over every workload: {peaks}"]
        largest = ", ".join(
            f"{side} {_fmt(overall[side].get('peak_process_rss_mib'))} MiB"
            for side in SIDES
            if side in overall
        )
        lines.append(f"peak RSS of one process over every workload: {largest}")
    costs = [
        f"  {name} / {w['versus_baseline']['baseline']}: requests/s ours "
        f"{_ratio_text(w['versus_baseline']['rps']['ours'])}, Distribution "
        f"{_ratio_text(w['versus_baseline']['rps']['distribution'])}; CPU per request ours "
        f"{_ratio_text(w['versus_baseline']['cpu_us_per_request']['ours'])}, Distribution "
        f"{_ratio_text(w['versus_baseline']['cpu_us_per_request']['distribution'])}"
        f" (target: ours requests/s >= {AUTH_TARGET:.2f}x: "
        f"{ {True: 'yes', False: 'NO', None: '-'}[w['versus_baseline']['meets_target']] })"
        for name, w in summary["workloads"].items()
        if "versus_baseline" in w
    ]
    if costs:
        lines += ["", "with token auth / without, each server against itself:", *costs]
    notes = [
        f"  {name}: {text}"
        for name, workload in summary["workloads"].items()
        for text in workload["notes"]
    ]
    if notes:
        lines += ["", "notes:", *notes]
    return "\n".join(lines)


def _ratio_text(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def write_json(summary: dict[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")

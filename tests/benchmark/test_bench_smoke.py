"""The benchmark runs end to end in a tiny mode and writes a well-formed report.

No timing is asserted: only that both servers were measured and every figure is there.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
DISTRIBUTION = "/usr/bin/docker-registry"
WORKLOADS = ("push-monolithic", "pull", "head-blob", "get-manifest", "small-pushes")
TINY = [
    "--repeat", "1", "--blob-mib", "4", "--chunk-mib", "1", "--pulls", "1",
    "--flood-seconds", "1", "--flood-connections", "8", "--small-count", "8",
    "--small-concurrency", "4", "--limits-mib", "8",
]  # fmt: skip


def _require_distribution() -> None:
    if not os.access(DISTRIBUTION, os.X_OK):
        reason = f"{DISTRIBUTION} not found (Debian package docker-registry)"
        if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
            pytest.fail(f"{reason}: CI must run the benchmark smoke test", pytrace=False)
        pytest.skip(reason)


def _run_bench(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", *args, "--workdir", str(tmp_path)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.mark.parametrize("client", ["python", "auto"])
def test_tiny_run_reports_both_servers(tmp_path: Path, client: str) -> None:
    _require_distribution()
    out = tmp_path / "report.json"
    only = ",".join(WORKLOADS if client == "python" else ("get-manifest",))
    done = _run_bench(tmp_path, *TINY, "--only", only, "--client", client, "--json", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"

    report = json.loads(out.read_text())
    assert report["version"] == 1
    assert report["settings"]["repeat"] == 1
    assert report["machine"]["cores"] >= 1
    for key in ("sha256_one_core_mbps", "disk_write_fsync_mbps", "loopback_sendfile_mbps"):
        assert report["limits"][key] > 0
    assert set(report["workloads"]) == set(only.split(","))
    for name, workload in report["workloads"].items():
        metrics = workload["metrics"]
        for key in ("server_cpu_s", "client_cpu_s", "peak_rss_mib"):
            assert key in metrics, (name, key)
        for key, metric in metrics.items():
            for side in ("ours", "distribution"):
                samples = metric[side]["samples"]
                assert len(samples) == 1, (name, key, side)
                assert all(_is_number(v) for v in samples), (name, key, side)
                assert _is_number(metric[side]["median"]), (name, key, side)
            assert metric["ratio"] is None or _is_number(metric["ratio"])
        primary = next(iter(metrics.values()))
        assert primary["ours"]["median"] > 0 and primary["distribution"]["median"] > 0, name
        assert primary["ratio"] is not None and primary["meets_target"] in (True, False)
    pull = report["workloads"].get("pull")
    if pull is not None:
        assert pull["metrics"]["mbps"]["ceiling"]["name"] == "loopback_sendfile_mbps"
        others = pull["metrics"]["mbps"]["other_ceilings"]
        assert [c["name"] for c in others] == ["loopback_tcp_mbps"]
    push = report["workloads"].get("push-monolithic")
    if push is not None:
        ceilings = [push["metrics"]["mbps"]["ceiling"], *push["metrics"]["mbps"]["other_ceilings"]]
        assert [c["name"] for c in ceilings] == [
            "sha256_one_core_mbps",
            "disk_write_fsync_mbps",
            "push_pipeline_mbps",
        ]
        assert all(c["ours_fraction"] > 0 for c in ceilings)
    # The table names every workload and says which is ours / Distribution's.
    for name in only.split(","):
        assert name in done.stdout
    assert "ratio" in done.stdout and "distribution" in done.stdout


def test_limits_mode(tmp_path: Path) -> None:
    done = _run_bench(tmp_path, "limits", "--limits-mib", "8")
    assert done.returncode == 0, done.stderr
    for label in ("SHA-256", "fsync", "loopback", "push: loopback+SHA-256+fsync"):
        assert label in done.stdout
    # Each ceiling is a measured rate, and the push pipeline's temporary file is gone.
    rates = [float(line.split()[-2]) for line in done.stdout.splitlines() if "MB/s" in line]
    assert len(rates) == 7 and all(rate > 0 for rate in rates)
    assert not list(tmp_path.rglob(".bench-*"))


def test_unknown_workload_is_refused(tmp_path: Path) -> None:
    done = _run_bench(tmp_path, "--only", "no-such-workload", "--no-limits")
    assert done.returncode != 0
    assert "unknown workloads" in done.stderr


def test_a_setting_of_ours_reaches_our_server(tmp_path: Path) -> None:
    _require_distribution()
    out = tmp_path / "report.json"
    done = _run_bench(
        tmp_path, *TINY, "--only", "push-monolithic", "--no-limits",
        "--setting", "storage.fsync=false", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["settings"]["ours_settings"] == {"storage.fsync": "false"}
    assert report["workloads"]["push-monolithic"]["metrics"]["mbps"]["ours"]["median"] > 0


def test_an_unknown_setting_is_refused(tmp_path: Path) -> None:
    done = _run_bench(tmp_path, "--setting", "storage.fsinc=false", "--no-limits")
    assert done.returncode != 0
    assert "storage.fsinc" in done.stderr


def test_gc_workload_collects_inside_ours_and_offline_in_distribution(tmp_path: Path) -> None:
    _require_distribution()
    out = tmp_path / "report.json"
    done = _run_bench(
        tmp_path, "--only", "gc", "--no-limits", "--gc-repos", "10", "--gc-manifests", "100",
        "--flood-seconds", "1", "--json", str(out),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    metrics = json.loads(out.read_text())["workloads"]["gc"]["metrics"]
    median = {key: {side: m[side]["median"] for side in ("ours", "distribution")}
              for key, m in metrics.items()}  # fmt: skip
    assert median["manifests_populated"] == {"ours": 100, "distribution": 100}
    # Every fifth manifest had a layer of its own and was deleted: those layers went (and
    # Distribution counts each deleted manifest as a blob too).
    assert median["blobs_deleted"] == {"ours": 20, "distribution": 40}
    assert median["served_during_gc"] == {"ours": 1, "distribution": 0}
    assert median["gc_get_p99_ms"]["ours"] > 0 and median["gc_head_p99_ms"]["ours"] > 0
    assert median["gc_seconds"]["ours"] > 0 and median["gc_seconds"]["distribution"] > 0


def test_tiny_run_on_s3(tmp_path: Path) -> None:
    """The S3 mode: both registries on one SeaweedFS, S3's own throughput as the ceilings,
    streamed and redirected pulls."""
    _require_distribution()
    from support.seaweedfs import weed_available

    if not weed_available():
        pytest.skip("SeaweedFS (weed) is not installed")
    out = tmp_path / "report.json"
    only = "push-chunked,pull,pull-redirect"
    done = _run_bench(tmp_path, *TINY, "--storage", "s3", "--only", only, "--json", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    report = json.loads(out.read_text())
    assert report["settings"]["storage"] == "s3"
    for key in ("s3_put_mbps", "s3_multipart_put_mbps", "s3_get_mbps", "s3_ranged_get_mbps"):
        assert report["limits"][key] > 0
    assert "sha256_one_core_mbps" not in report["limits"]
    for name in only.split(","):
        mbps = report["workloads"][name]["metrics"]["mbps"]
        assert mbps["ours"]["median"] > 0 and mbps["distribution"]["median"] > 0, name
        assert mbps["ceiling"]["name"].startswith("s3_"), name


def test_token_auth_workloads(tmp_path: Path) -> None:
    """Both servers in token mode (ours with its own token endpoint, Distribution with the
    bench's token server): every request of the flood is answered 2xx, so each verified a
    token, and the report compares each server with itself without auth."""
    _require_distribution()
    out = tmp_path / "report.json"
    only = "head-blob,head-blob-token,get-manifest-token"
    done = _run_bench(
        tmp_path, *TINY, "--only", only, "--no-limits", "--client", "python", "--json", str(out)
    )
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    for name in ("head-blob-token", "get-manifest-token"):
        workload = report["workloads"][name]
        assert not [n for n in workload["notes"] if "errors" in n], workload["notes"]
        for side in ("ours", "distribution"):
            assert workload["metrics"]["rps"][side]["median"] > 0
            assert workload["metrics"]["cpu_us_per_request"][side]["median"] > 0
    against = report["workloads"]["head-blob-token"]["versus_baseline"]
    assert against["baseline"] == "head-blob"
    for key in ("rps", "cpu_us_per_request"):
        assert all(_is_number(against[key][side]) for side in ("ours", "distribution"))
    assert against["meets_target"] in (True, False)
    assert "get-manifest-token" in report["workloads"]
    assert "versus_baseline" not in report["workloads"]["get-manifest-token"]  # no baseline run
    assert "with token auth / without" in done.stdout


TOKEN_MODE_CHECK = """
import sys, tempfile
from pathlib import Path
from bench import rawhttp, servers

with servers.make_server(sys.argv[1], Path(sys.argv[2]), auth=True) as server:
    with rawhttp.Connection(server.host) as conn:
        refused = conn.request("GET", "/v2/bench/x/tags/list")
        headers = server.bearer(["repository:bench/x:pull"])
        print(refused.status, "Bearer realm=" in refused.header("www-authenticate"),
              conn.request("GET", "/v2/bench/x/tags/list", headers).status,
              conn.request("GET", "/v2/", headers).status)
"""


@pytest.mark.parametrize("side", ["ours", "distribution"])
def test_servers_in_token_mode_refuse_requests_without_a_token(tmp_path: Path, side: str) -> None:
    if side == "distribution":
        _require_distribution()
    done = subprocess.run(
        [sys.executable, "-c", TOKEN_MODE_CHECK, side, str(tmp_path)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.split() == ["401", "True", "404", "200"]

def test_build_workload_measures_both_builders(tmp_path: Path) -> None:
    """Ours and docker's classic builder, cold and cached, on a tiny context (root only:
    building needs it; the private dockerd is the tests' own)."""
    _require_distribution()
    if os.geteuid() != 0:
        pytest.skip("building needs root")
    out = tmp_path / "report.json"
    done = _run_bench(tmp_path, "--only", "build", "--repeat", "1", "--no-limits",
                      "--build-files", "12", "--build-mib", "1", "--json", str(out))
    assert done.returncode == 0, f"stdout:\n{done.stdout}\nstderr:\n{done.stderr[-4000:]}"
    metrics = json.loads(out.read_text())["workloads"]["build"]["metrics"]
    assert set(metrics) == {"cold_s", "cached_s", "cold_cpu_s", "cached_cpu_s"}
    for metric in metrics.values():
        for side in ("ours", "distribution"):
            assert len(metric[side]["samples"]) == 1 and metric[side]["median"] > 0
    assert metrics["cached_s"]["meets_target"] == (metrics["cached_s"]["ratio"] <= 0.5)
    assert "docker" in done.stdout

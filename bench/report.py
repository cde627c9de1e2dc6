"""Turn pytest-benchmark JSON files into the README's tables: `report.py FILE` for the engine
(medians, ns per bar, ratios), `report.py soak|fanout|requests FILE` for the service benchmarks."""
import json
import sys


def main(path: str) -> None:
    with open(path) as f:
        run = json.load(f)
    rows = {(r["extra_info"]["backend"], r["extra_info"]["lookback"]): (r["stats"]["median"], r["extra_info"]["bars"])
            for r in run["benchmarks"]}
    print(f"machine: {run['machine_info']['cpu'].get('brand_raw', '?')}\n")
    print("| view | bars | backend | median | ns / bar | cython speed-up |")
    print("|---|---:|---|---:|---:|---:|")
    for (backend, lookback), (median, bars) in rows.items():
        base = rows.get(("cython", lookback))
        ratio = f"{median / base[0]:,.0f}x" if base and backend not in ("cython", "cython kernel only") else ""
        print(f"| {lookback} | {bars:,} | {backend} | {median * 1e3:,.2f} ms | {median / bars * 1e9:,.0f} | {ratio} |")


def soak(path: str) -> None:
    """`report.py soak FILE`: the soak's per-phase table (bench/test_soak.py) from its benchmark JSON."""
    from test_soak import print_table
    with open(path) as f:
        run = next(r for r in json.load(f)["benchmarks"] if r["name"] == "test_soak")
    print_table(run["extra_info"]["phases"], run["extra_info"]["store"])


def fanout(path: str) -> None:
    """`report.py fanout FILE`: bench/test_fanout_bench.py's tables (refresh -> subscribers, idle memory)."""
    with open(path) as f:
        runs = [r["extra_info"] for r in json.load(f)["benchmarks"]]
    print("| server | subscribers | message | updates | since clock step p50 / p99 / max | since refresh() returned "
          "p50 / p99 / max | refresh | server CPU / update (loop) | clients CPU / update | server RSS |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for e in (e for e in runs if "updates" in e):
        grids = "zones only" if e["zones_only"] else "full 400 x 288"
        print(f"| {e['server']} | {e['subscribers']:,} {grids} | {e['message_bytes'] / 1024:,.0f} KB | {e['updates']} "
              f"| {e['p50_ms']:,.0f} / {e['p99_ms']:,.0f} / {e['max_ms']:,.0f} ms "
              f"| {e['after_refresh_p50_ms']:,.0f} / {e['after_refresh_p99_ms']:,.0f} / {e['after_refresh_max_ms']:,.0f} ms "
              f"| {e['refresh_ms']:,.0f} ms | {e['server_cpu_ms_per_update']:,.0f} ({e['server_loop_cpu_ms_per_update']:,.0f}) ms "
              f"| {e['clients_cpu_ms_per_update']:,.0f} ms | {e['rss_subscribed_mb']:,.0f} MB, peak {e['rss_peak_mb']:,.0f} MB |")
    print("\n| idle subscribers | server RSS before | after | per subscriber | asyncio tasks per subscriber |")
    print("|---|---:|---:|---:|---:|")
    for e in (e for e in runs if "kb_per_subscriber" in e):
        grids = "zones only" if e["zones_only"] else "full 400 x 288"
        print(f"| {e['subscribers']:,} {grids} | {e['rss_before_mb']:,.1f} MB | {e['rss_after_mb']:,.1f} MB "
              f"| {e['kb_per_subscriber']:,.1f} KB | {e['tasks_per_subscriber']:.1f} |")


def requests(path: str) -> None:
    """`report.py requests FILE`: bench/test_requests_bench.py's table (GetZones / GetHeatmap throughput)."""
    with open(path) as f:
        runs = [r["extra_info"] for r in json.load(f)["benchmarks"]]
    print("| server | method | concurrency | response | requests / s | p50 | p99 | max | server CPU / call (loop) "
          "| server cores | clients cores |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for e in (e for e in runs if "requests_per_s" in e):
        print(f"| {e['server']} | {e['method']} | {e['concurrency']} | {e['response_bytes'] / 1024:,.0f} KB "
              f"| {e['requests_per_s']:,.0f} | {e['p50_ms']:,.2f} ms | {e['p99_ms']:,.2f} ms | {e['max_ms']:,.2f} ms "
              f"| {e['server_cpu_us_per_call']:,.0f} ({e['server_loop_cpu_us_per_call']:,.0f}) µs "
              f"| {e['server_cores']:.2f} | {e['clients_cores']:.2f} |")


if __name__ == "__main__":
    tables = {"soak": soak, "fanout": fanout, "requests": requests}
    if sys.argv[1] in tables:
        tables[sys.argv[1]](sys.argv[2])
    else:
        main(sys.argv[1])   # the engine's table

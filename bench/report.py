"""Turn a pytest-benchmark JSON file into the README's table: medians, ns per bar, and ratios."""
import json
import sys


def main(path: str) -> None:
    runs = json.load(open(path))["benchmarks"]
    rows = {(r["extra_info"]["backend"], r["extra_info"]["lookback"]): (r["stats"]["median"], r["extra_info"]["bars"])
            for r in runs}
    print(f"machine: {json.load(open(path))['machine_info']['cpu'].get('brand_raw', '?')}\n")
    print("| view | bars | backend | median | ns / bar | cython speed-up |")
    print("|---|---:|---|---:|---:|---:|")
    for (backend, lookback), (median, bars) in rows.items():
        base = rows.get(("cython", lookback))
        ratio = f"{median / base[0]:,.0f}x" if base and backend not in ("cython", "cython kernel only") else ""
        print(f"| {lookback} | {bars:,} | {backend} | {median * 1e3:,.2f} ms | {median / bars * 1e9:,.0f} | {ratio} |")


if __name__ == "__main__":
    main(sys.argv[1])

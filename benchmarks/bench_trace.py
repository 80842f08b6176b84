#!/usr/bin/env python3
"""labctl trace on the demo lab, three paths (same node, across VXLAN, through a
Service), against the baseline of `labctl probe` of the same flow measured in
the same run; and the web view's page load in headless Chromium (the page's
own mark: picture and status in), against Chromium loading the same page's
HTML from a file. Builds the demo lab and takes it down.

    sudo .venv/bin/python benchmarks/bench_trace.py [--runs N]

Goals (issue 15): one trace under 1.5 s on the demo; the page in under 1 s.
Results also go to benchmarks/results/bench_trace.json.
"""

from __future__ import annotations

import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LABCTL = [str(REPO / ".venv" / "bin" / "labctl")]
PATHS = [("same node", "toolbox", "default/web-0"), ("across VXLAN", "toolbox", "default/web-1"), ("through a Service", "toolbox", "svc/default/web")]
CHROMIUM = ["chromium-headless-shell", "--no-sandbox", "--headless", "--disable-gpu", "--virtual-time-budget=20000"]


def run(*args: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([*LABCTL, *args], check=True, capture_output=True)
    return time.perf_counter() - t0


def page_ms(url: str) -> float:
    dom = subprocess.run([*CHROMIUM, "--dump-dom", url], check=True, capture_output=True, text=True).stdout
    return float(re.search(r'data-loaded-ms="(\d+)"', dom).group(1))


def main() -> int:
    runs = int(sys.argv[sys.argv.index("--runs") + 1]) if "--runs" in sys.argv else 5
    subprocess.run([*LABCTL, "up", str(REPO / "topologies" / "demo.yaml")], check=True, capture_output=True)
    results: dict = {"runs": runs, "paths": {}}
    try:
        print(f"labctl trace on the demo lab (median of {runs}), against labctl probe of the same flow")
        for title, a, b in PATHS:
            probe = statistics.median(run("probe", "--lab", "demo", a, b) for _ in range(runs))
            trace = statistics.median(run("trace", "--lab", "demo", a, b) for _ in range(runs))
            results["paths"][title] = {"probe_s": probe, "trace_s": trace}
            print(
                f"  {title:<18} probe {probe * 1000:7.0f} ms   trace {trace * 1000:7.0f} ms   {trace / probe:.2f}x   goal < 1.5 s: {'ok' if trace < 1.5 else 'MISSED'}"
            )
        ui = subprocess.Popen([*LABCTL, "ui", "--lab", "demo", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE, text=True)
        try:
            url = re.search(r"(http://\S+/)", ui.stdout.readline()).group(1)
            static = REPO / "benchmarks" / "results" / "ui-static.html"
            static.parent.mkdir(exist_ok=True)
            static.write_bytes(subprocess.run(["curl", "-s", url], check=True, capture_output=True).stdout.replace(b"const t0", b"const t0x"))
            t_page = statistics.median(page_ms(url) for _ in range(runs))
            t0 = time.perf_counter()
            for _ in range(runs):
                subprocess.run([*CHROMIUM, "--dump-dom", static.as_uri()], check=True, capture_output=True)
            whole = (time.perf_counter() - t0) / runs
            static.unlink()
        finally:
            ui.terminate()
            ui.wait(timeout=10)
        results["ui_page_ms"] = t_page
        results["chromium_static_page_s"] = whole
        print(f"  web view: the page's own mark (picture and status in) {t_page:.0f} ms   goal < 1 s: {'ok' if t_page < 1000 else 'MISSED'}")
        print(f"            (Chromium starting and loading the page's HTML from a file, whole: {whole * 1000:.0f} ms)")
    finally:
        subprocess.run([*LABCTL, "down", "demo"], capture_output=True)
    (REPO / "benchmarks" / "results" / "bench_trace.json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

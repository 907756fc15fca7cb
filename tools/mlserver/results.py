#!/usr/bin/env python3
"""Helpers of tools/mlserver/compare.sh (standard library only).

    results.py check AGENT_URL MLSERVER_URL BODY.json...
        posts every body to both /v2/models/gbr/infer URLs and fails (exit 1) unless both
        servers answer the same prediction for every row, within 1e-4 relative
    results.py table RESULTS.tsv AGENT_RSS_KB MLSERVER_RSS_KB MLSERVER_PROCESSES
        prints the markdown table of the wrk rounds (median over rounds) and the RSS figures
"""

import json
import statistics
import sys
import urllib.request

RTOL = 1e-4


def infer(url, body):
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as r:
        answer = json.load(r)
    outs = answer.get("outputs") or []
    if len(outs) != 1:
        sys.exit(f"FAIL: {url} answered {len(outs)} outputs, expected one: {answer}")
    data = outs[0]["data"]
    # Flat or nested, as the protocol allows: flatten row-major.
    flat = []
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(float(item))
    return outs[0], flat


def check(agent_url, mlserver_url, bodies):
    for path in bodies:
        with open(path, "rb") as f:
            body = f.read()
        rows = json.loads(body)["inputs"][0]["shape"][0]
        a_out, a = infer(agent_url, body)
        m_out, m = infer(mlserver_url, body)
        if len(a) != rows or len(m) != rows:
            sys.exit(f"FAIL {path}: {rows} rows sent, agent answered {len(a)} values, MLServer {len(m)}")
        worst = 0.0
        for i, (x, y) in enumerate(zip(a, m)):
            rel = abs(x - y) / max(abs(y), 1e-30)
            worst = max(worst, rel)
            if rel > RTOL:
                sys.exit(
                    f"FAIL {path} row {i}: agent {x!r} ({a_out['name']}, {a_out['datatype']}) vs "
                    f"MLServer {y!r} ({m_out['name']}, {m_out['datatype']}): relative difference "
                    f"{rel:.3g} > {RTOL}"
                )
        print(
            f"    {path.rsplit('/', 1)[-1]}: {rows} row(s) agree (agent {a_out['datatype']} {a[0]:.6g}, "
            f"MLServer {m_out['datatype']} {m[0]:.6g}, first row; max relative difference {worst:.2g})"
        )


def us(v):
    return f"{v:,.0f} µs" if v < 1000 else f"{v / 1000:,.2f} ms"


def table(tsv, agent_kb, mls_kb, mls_procs):
    runs = {}  # (body, side) -> [(rps, p50, p99)]
    with open(tsv) as f:
        for line in f:
            body, side, _round, rps, p50, p99 = line.split("\t")
            runs.setdefault((body, side), []).append((float(rps), float(p50), float(p99)))
    bodies = []
    for body, _ in runs:
        if body not in bodies:
            bodies.append(body)
    print("| request | agent req/s | agent p50 | agent p99 | MLServer req/s | MLServer p50 | MLServer p99 | agent ÷ MLServer req/s |")
    print("|---|---|---|---|---|---|---|---|")
    detail = []
    for body in bodies:
        med = {}
        for side in ("agent", "mlserver"):
            r = runs[(body, side)]
            med[side] = [statistics.median(v[i] for v in r) for i in range(3)]
            detail.append(f"{body} {side}: " + ", ".join(f"{v[0]:,.0f}" for v in r))
        a, m = med["agent"], med["mlserver"]
        print(
            f"| {body} | {a[0]:,.0f} | {us(a[1])} | {us(a[2])} | {m[0]:,.0f} | {us(m[1])} | {us(m[2])} | "
            f"**{a[0] / m[0]:.1f}×** |"
        )
    print()
    print("req/s of each round, in run order: " + "; ".join(detail))
    print()
    a_kb, m_kb = int(agent_kb), int(mls_kb)
    print(
        f"RSS after the runs (VmRSS): agent {a_kb / 1024:.1f} MiB; MLServer {m_kb / 1024:.1f} MiB "
        f"(sum over its {mls_procs} process(es)); MLServer ÷ agent {m_kb / a_kb:.1f}×"
    )


def main():
    if len(sys.argv) >= 5 and sys.argv[1] == "check":
        check(sys.argv[2], sys.argv[3], sys.argv[4:])
    elif len(sys.argv) == 6 and sys.argv[1] == "table":
        table(*sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

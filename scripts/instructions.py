#!/usr/bin/env python3
"""Instructions per proxied request, counted by callgrind: a steady figure for comparing two
builds (timings on a shared 2-core VM move by 10% between runs; this moves by 0.1%).

Sets up as scripts/bench.py does (the mocks, nginx and the bare proxy, pinned with taskset),
then runs the gateway (every feature on, token budgets included, as in bench.py) or the bare proxy
(examples/bare_proxy.rs) under `valgrind --tool=callgrind` with instrumentation off, warms
four keep-alive TLS connections, counts `--requests` non-streaming requests, and prints the
instructions per request. The profile is left in the output directory for callgrind_annotate.

    cargo build --release --bin ollama-gateway --example mock_upstream \
        --example bench_client --example bare_proxy
    python3 scripts/instructions.py              # the gateway
    python3 scripts/instructions.py --bare       # the required stack alone
    python3 scripts/instructions.py --no-budgets # the gateway without token budgets
    python3 scripts/instructions.py --path /v1/chat/completions   # another endpoint

Needs valgrind, nginx and taskset (Debian: apt-get install valgrind nginx-light util-linux).
Standard library only.
"""

import argparse
import http.client
import re
import shlex
import ssl
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench as B  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bare", action="store_true", help="measure examples/bare_proxy.rs instead of the gateway")
    ap.add_argument("--no-budgets", action="store_true",
                    help="the gateway without the token budgets of the bench key and its team (bench.py's S3 no-budgets)")
    ap.add_argument("--path", default="/api/chat", choices=["/api/chat", "/api/generate", B.V1_CHAT],
                    help="the endpoint to load, with bench.py's request for it")
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--out", default=None, help="directory for the callgrind profile (default: a temporary one)")
    args = ap.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="ogw-callgrind-"))
    out.mkdir(parents=True, exist_ok=True)
    bench = B.Bench(argparse.Namespace(debug=False, baseline=None, baseline_label=None))
    wrapper = out / "under-callgrind.sh"
    target = bench.bare_bin if args.bare else bench.gateway_bin
    wrapper.write_text("#!/bin/sh\nexec valgrind --tool=callgrind --instr-atstart=no "
                       f"--callgrind-out-file={shlex.quote(str(out))}/callgrind.out.%p "
                       f"{shlex.quote(str(target))} \"$@\"\n")
    wrapper.chmod(0o755)
    try:
        bench.setup()
        if args.bare:
            port = bench.bare_port
            bench.stop(bench.bare)
            proc = bench.start("bare-callgrind", [str(wrapper), "--listen", f"127.0.0.1:{port}",
                                                  "--cert", str(bench.cert), "--key", str(bench.key),
                                                  "--upstream", f"http://127.0.0.1:{bench.mock_port}"],
                               B.PROXY_CPU, port)
            headers = {"Content-Type": "application/json"}
        else:
            bench.gateway_bin = wrapper
            proc = bench.start_gateway("all-on", bench.keys_1 if args.no_budgets else None)
            port = proc.port
            headers = {"Content-Type": "application/json", "Authorization": f"Bearer {B.BENCH_KEY}"}
        body = {"/api/chat": B.CHAT_BODY, "/api/generate": B.GENERATE_BODY, B.V1_CHAT: B.V1_CHAT_BODY}[args.path]
        ctx = ssl.create_default_context(cafile=str(bench.ca))
        conns = [http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=120) for _ in range(4)]

        def one(conn):
            conn.request("POST", args.path, body=body, headers=headers)
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                sys.exit(f"unexpected status {resp.status}")

        for conn in conns:
            for _ in range(100):
                one(conn)
        subprocess.run(["callgrind_control", "--instr=on", str(proc.pid)], check=True, capture_output=True)
        for i in range(args.requests):
            one(conns[i % len(conns)])
        subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True, capture_output=True)
    finally:
        bench.stop_all()
    total = 0
    for f in out.glob(f"callgrind.out.{proc.pid}*"):
        text = f.read_text(errors="replace")
        if "Trigger: dump" in text:
            total += int(re.search(r"^summary: (\d+)", text, re.M)[1])
            profile = f
    if not total:
        sys.exit("no callgrind dump found")
    what = "bare proxy" if args.bare else "gateway without token budgets" if args.no_budgets else "gateway"
    print(f"{what} {args.path}: {total / args.requests:,.0f} instructions per request "
          f"({args.requests} requests; profile: {profile})")


if __name__ == "__main__":
    main()

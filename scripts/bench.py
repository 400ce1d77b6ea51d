#!/usr/bin/env python3
"""The load harness: the gateway against nginx and the bare mock, on one machine over loopback.

Run it with scripts/bench.sh (which builds with --release first). It starts the mock upstream
(examples/mock_upstream.rs), nginx (one worker, the same ECDSA certificate, upstream keep-alive,
proxy buffering and logging off) and the gateway (one worker, every feature on, logs at info
to a file), pins the proxy under test to CPU 0 and the load tools and mock to CPU 1, runs the
scenarios S1-S7 of issue "Performance" as interleaved rounds (direct / nginx / gateway, plus
in S1 and S2 examples/bare_proxy.rs: the required stack with no feature), S2's load on
/api/generate and /api/embed too (S2g, S2e: also translated to the mock's OpenAI side) and on
/v1/chat/completions (S2c, and S4's `v1` streams: OpenAI's API relayed to Ollama's /v1, and to
an OpenAI-compatible upstream with the model rewritten), and writes BENCHMARKS.md with medians,
spread (min-max over rounds), the commands, the machine and the commit.

Standard library only. Needs nginx, wrk and taskset (Debian: nginx-light or nginx, wrk,
util-linux).
"""

import argparse
import datetime
import hashlib
import json
import os
import platform
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROXY_CPU = "0"
LOAD_CPU = "1"
BENCH_KEY = "ogw_bench_key_0000000000000000000000"
LIMITED_KEY = "ogw_bench_limited_key_000000000000000"
LIMITED_RPM = 600
LIMITED_BURST = 100
CHAT_BODY = '{"model":"llama3","messages":[{"role":"user","content":"hi"}],"stream":false}'
# S2g / S2e: the other proxied model endpoints, whole answers like S2's chat.
GENERATE_BODY = '{"model":"llama3","prompt":"hi","stream":false}'
EMBED_BODY = '{"model":"nomic-embed-text","input":"hi"}'
# S2c: OpenAI's chat as the openai SDK sends it (no "stream": OpenAI's default is a whole answer).
V1_CHAT_BODY = '{"model":"llama3","messages":[{"role":"user","content":"hi"}]}'
V1_CHAT = "/v1/chat/completions"
COMMANDS = []  # every load command run, for BENCHMARKS.md
S4_KINDS = ("ollama", "openai", "v1")


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, target), hard))


def wait_port(port, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on {port}")


def cpu_times(pid):
    """The CPU seconds of process `pid` (all its threads) so far: (user, system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks  # utime, stime


def pinned(cpu, cmd):
    return ["taskset", "-c", cpu] + cmd


class Proc:
    def __init__(self, name, cmd, log_path, cpu, env=None):
        self.name = name
        self.log = open(log_path, "wb")
        self.p = subprocess.Popen(pinned(cpu, cmd), stdout=self.log, stderr=subprocess.STDOUT,
                                  env=env, preexec_fn=raise_nofile)
        self.pid = self.p.pid

    def stop(self):
        self.p.terminate()
        try:
            self.p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.p.kill()
        self.log.close()


class Bench:
    def __init__(self, args):
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="ogw-bench-"))
        profile = "debug" if args.debug else "release"
        self.gateway_bin = ROOT / "target" / profile / "ollama-gateway"
        self.mock_bin = ROOT / "target" / profile / "examples" / "mock_upstream"
        self.client_bin = ROOT / "target" / profile / "examples" / "bench_client"
        self.bare_bin = ROOT / "target" / profile / "examples" / "bare_proxy"
        self.baseline_bin = Path(args.baseline).resolve() if args.baseline else None
        for b in (self.gateway_bin, self.mock_bin, self.client_bin, self.bare_bin, self.baseline_bin):
            if b is None:
                continue
            if not b.exists():
                sys.exit(f"missing {b}: build first (scripts/bench.sh does)")
        self.procs = []
        self.results = {}

    # ---- processes -------------------------------------------------------------------
    def start(self, name, cmd, cpu, port, env=None):
        proc = Proc(name, cmd, self.work / f"{name}.log", cpu, env)
        self.procs.append(proc)
        wait_port(port)
        return proc

    def stop(self, proc):
        proc.stop()
        self.procs.remove(proc)

    def stop_all(self):
        for p in list(self.procs):
            self.stop(p)

    def setup(self):
        certs = self.work / "certs"
        subprocess.run([str(self.gateway_bin), "certs", "new", "--out", str(certs), "--name", "localhost",
                        "--name", "127.0.0.1"], check=True, stdout=subprocess.DEVNULL)
        self.ca = certs / "ca.pem"
        self.cert = certs / "server.pem"
        self.key = certs / "server-key.pem"
        self.keys_1 = self.work / "keys-1.toml"
        self.keys_10k = self.work / "keys-10k.toml"
        self.keys_1.write_text(self.entry("bench", BENCH_KEY, 60_000_000, 1_000_000)
                               + self.entry("limited", LIMITED_KEY, LIMITED_RPM, LIMITED_BURST))
        # The same keys with token budgets for the bench key and its team, large enough
        # never to refuse: "every feature on" includes them (reserve, settle, headers); S3's
        # "no-budgets" row runs without them, to show what they cost.
        self.keys_budgets = self.work / "keys-budgets.toml"
        big = 10**15
        self.keys_budgets.write_text(
            f'[[teams]]\nname = "bench"\ntokens_per_minute = {big}\ntokens_per_day = {big}\n'
            f"tokens_per_month = {big}\n\n"
            + self.keys_1.read_text().replace(
                "max_in_flight = 100000\n",
                f"max_in_flight = 100000\ntokens_per_minute = {big}\ntokens_per_day = {big}\n", 1))
        with open(self.keys_10k, "w") as f:
            f.write(self.keys_budgets.read_text())
            for i in range(10_000):
                f.write(self.entry(f"team-{i}", f"ogw_bench_other_{i:05d}", 120, 20))
        self.mock_port = free_port()
        self.mock = self.start("mock", [str(self.mock_bin), "--listen", f"127.0.0.1:{self.mock_port}",
                                        "--tokens", "64", "--interval-ms", "20", "--workers", "1"],
                               LOAD_CPU, self.mock_port)
        self.slow_mock_port = free_port()
        self.start("mock-long", [str(self.mock_bin), "--listen", f"127.0.0.1:{self.slow_mock_port}",
                                 "--tokens", "100000", "--interval-ms", "1000", "--workers", "1"],
                   LOAD_CPU, self.slow_mock_port)
        self.nginx_port = free_port()
        self.nginx = self.start_nginx()
        # The required stack alone (actix-web, rustls, the gateway's awc client), no features.
        self.bare_port = free_port()
        self.bare = self.start("bare", [str(self.bare_bin), "--listen", f"127.0.0.1:{self.bare_port}",
                                        "--cert", str(self.cert), "--key", str(self.key),
                                        "--upstream", f"http://127.0.0.1:{self.mock_port}"],
                               PROXY_CPU, self.bare_port)

    @staticmethod
    def entry(key_id, key, rpm, burst):
        digest = hashlib.sha256(key.encode()).hexdigest()
        return (f'[[keys]]\nid = "{key_id}"\nteam = "bench"\nsha256 = "{digest}"\n'
                f"requests_per_minute = {rpm}\nburst = {burst}\nmax_in_flight = 100000\n\n")

    def start_nginx(self):
        prefix = self.work / "nginx"
        (prefix / "logs").mkdir(parents=True, exist_ok=True)
        conf = prefix / "nginx.conf"
        conf.write_text(f"""
worker_processes 1;
master_process off;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log error;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    upstream mock {{ server 127.0.0.1:{self.mock_port}; keepalive 128; }}
    server {{
        listen 127.0.0.1:{self.nginx_port} ssl;
        ssl_certificate {self.cert};
        ssl_certificate_key {self.key};
        ssl_protocols TLSv1.2 TLSv1.3;
        keepalive_requests 1000000;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_request_buffering off;
        }}
    }}
}}
""")
        return self.start("nginx", ["nginx", "-p", str(prefix), "-c", str(conf)], PROXY_CPU, self.nginx_port)

    def start_gateway(self, variant="all-on", keys=None, upstream_port=None, binary=None):
        """The gateway under test; `binary` another build of it (--baseline) with the same
        configuration, minus the options an older build may not know (S2 needs none of them),
        unless --baseline-same-config says it knows them all: then token budgets included."""
        port = free_port()
        admin = free_port()
        conf = self.work / f"gateway-{variant}.toml"
        all_on = variant != "all-off"
        older = binary is not None and not self.args.baseline_same_config
        # The load generator is one address holding up to 2,000 streams (S5).
        per_ip = "" if older else "max_connections_per_ip = 0"
        state = "" if older else f'[state]\ndir = "{self.work / ("state-" + variant)}"'
        conf.write_text(f"""
[server]
listen = "127.0.0.1:{port}"
workers = 1
max_connections = 100000
{per_ip}
[tls]
cert = "{self.cert}"
key = "{self.key}"
[ollama]
base_url = "http://127.0.0.1:{upstream_port or self.mock_port}"
[upstreams.openai]
base_url = "http://127.0.0.1:{upstream_port or self.mock_port}/v1"
api_key = "sk-bench"
[auth]
keys_file = "{keys or (self.keys_1 if older else self.keys_budgets)}"
[allowlist]
{'cidrs = ["127.0.0.0/8", "10.0.0.0/8"]' if all_on else 'allow_all = true'}
[admin]
listen = "{f'127.0.0.1:{admin}' if all_on else ''}"
[log]
level = "{'info' if all_on else 'error'}"
format = "json"
{state}
""")
        env = dict(os.environ, RUST_LOG="")
        env.pop("RUST_LOG")
        proc = self.start(f"gateway-{variant}", [str(binary or self.gateway_bin), "serve", "--config", str(conf)],
                          PROXY_CPU, port, env)
        proc.port = port
        proc.admin = admin if all_on else None
        return proc

    # ---- load tools ------------------------------------------------------------------
    def wrk(self, url, connections, duration, key=None, body=CHAT_BODY):
        script = self.work / f"post-{abs(hash((key, body)))}.lua"
        headers = 'wrk.headers["Content-Type"] = "application/json"\n'
        if key:
            headers += f'wrk.headers["Authorization"] = "Bearer {key}"\n'
        script.write_text(f'wrk.method = "POST"\nwrk.body = {json.dumps(body)}\n{headers}')
        cmd = pinned(LOAD_CPU, ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency",
                                "-s", str(script), url])
        COMMANDS.append(" ".join(cmd).replace(str(self.work), "$WORK"))
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return parse_wrk(out)

    def client(self, *args):
        cmd = pinned(LOAD_CPU, [str(self.client_bin)] + list(args))
        COMMANDS.append(" ".join(cmd).replace(str(self.work), "$WORK"))
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    def targets(self, gateway):
        return {
            "direct": (f"http://127.0.0.1:{self.mock_port}", None, None),
            "nginx": (f"https://127.0.0.1:{self.nginx_port}", None, self.nginx),
            "gateway": (f"https://127.0.0.1:{gateway.port}", BENCH_KEY, gateway),
        }

    def check_v1_chat(self, gateway):
        """One whole answer from POST /v1/chat/completions before S2c and S4 load it: wrk counts
        only statuses, so this checks that the gateway relays the mock's chat.completion with
        the client's model name; anything else stops the run."""
        req = urllib.request.Request(f"https://127.0.0.1:{gateway.port}{V1_CHAT}", data=V1_CHAT_BODY.encode(),
                                     method="POST", headers={"Content-Type": "application/json",
                                                             "Authorization": f"Bearer {BENCH_KEY}"})
        ctx = ssl.create_default_context(cafile=str(self.ca))
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
                answer = json.load(resp)
        except urllib.error.HTTPError as e:
            sys.exit(f"gateway POST {V1_CHAT}: {e.code} {e.read()[:300]!r}")
        if answer.get("object") != "chat.completion" or answer.get("model") != "llama3":
            sys.exit(f"gateway POST {V1_CHAT}: not the mock's answer: {json.dumps(answer)[:300]}")

    # ---- scenarios -------------------------------------------------------------------
    def s1_s2(self, gateway, baseline=None):
        """S1 and S2 in interleaved rounds; with --baseline, S2 also runs against that
        other build of the gateway in the same rounds (its S1 is not measured)."""
        d = self.args.duration
        extra = [("bare", (f"https://127.0.0.1:{self.bare_port}", None, self.bare))]
        if baseline:
            extra.append(("baseline", (f"https://127.0.0.1:{baseline.port}", BENCH_KEY, baseline)))
        for rnd in range(self.args.rounds):
            for name, (base, key, proc) in list(self.targets(gateway).items()) + extra:
                if name != "baseline":
                    log(f"S1 round {rnd + 1} {name}")
                    r = self.wrk(base + "/api/chat", 1, d, key)
                    self.add("S1", name, "p50_us", r["p50_us"])
                    self.add("S1", name, "p99_us", r["p99_us"])
                log(f"S2 round {rnd + 1} {name}")
                self.throughput("S2", name, (proc or self.mock).pid,
                                lambda: self.wrk(base + "/api/chat", 64, d, key))

    def throughput(self, scenario, name, pid, run):
        """Runs `run` (a wrk load) and adds its requests/s and errors, and the CPU per request
        of process `pid`: in all, and split into user time (the proxy's own code) and system
        time (the kernel's TCP and syscalls). Returns wrk's figures."""
        (user0, sys0) = cpu_times(pid)
        r = run()
        (user1, sys1) = cpu_times(pid)
        per_req = 1e6 / max(r["requests"], 1)
        self.add(scenario, name, "rps", r["rps"])
        self.add(scenario, name, "cpu_us_per_req", (user1 - user0 + sys1 - sys0) * per_req)
        self.add(scenario, name, "cpu_user_us_per_req", (user1 - user0) * per_req)
        self.add(scenario, name, "cpu_sys_us_per_req", (sys1 - sys0) * per_req)
        self.add(scenario, name, "errors", r["errors"])
        return r

    def s2_endpoints(self, gateway, which):
        """S2g, S2e, S2c: S2's load on /api/generate, /api/embed and /v1/chat/completions,
        relayed (direct / nginx / gateway to Ollama) and sent by the gateway to the OpenAI side
        of the mock (translated; for S2c relayed with the model rewritten)."""
        d = self.args.duration
        gw = f"https://127.0.0.1:{gateway.port}"
        for rnd in range(self.args.rounds):
            for scenario, path, body in (("S2g", "/api/generate", GENERATE_BODY), ("S2e", "/api/embed", EMBED_BODY),
                                         ("S2c", V1_CHAT, V1_CHAT_BODY)):
                if scenario not in which:
                    continue
                translated = json.loads(body)
                translated["model"] = "openai/mock"
                runs = [(name, base, key, proc, body) for name, (base, key, proc) in self.targets(gateway).items()]
                runs.append(("bare", f"https://127.0.0.1:{self.bare_port}", None, self.bare, body))
                runs.append(("gateway-openai", gw, BENCH_KEY, gateway, json.dumps(translated)))
                for name, base, key, proc, payload in runs:
                    log(f"{scenario} round {rnd + 1} {name}")
                    r = self.throughput(scenario, name, (proc or self.mock).pid,
                                        lambda: self.wrk(base + path, 64, d, key, body=payload))
                    if r["non2xx"] or r["requests"] == 0:
                        sys.exit(f"{scenario} {name}: {r['non2xx']} non-2xx answers of {r['requests']}")

    def s3(self):
        d = self.args.duration
        for rnd in range(self.args.rounds):
            for variant, keys in (("all-on", self.keys_budgets), ("all-off", self.keys_1),
                                  ("10k-keys", self.keys_10k), ("no-budgets", self.keys_1)):
                log(f"S3 round {rnd + 1} {variant}")
                gw = self.start_gateway(variant, keys)
                r = self.wrk(f"https://127.0.0.1:{gw.port}/api/chat", 64, d, BENCH_KEY)
                self.add("S3", variant, "rps", r["rps"])
                self.stop(gw)

    def s4_runs(self, gateway, kind):
        """S4's streams of one kind, as (target, url, key, body, sse):
        ollama: /api/chat everywhere (NDJSON);
        openai: the gateway's /api/chat translated from the mock's OpenAI side, against that
                side's SSE read direct and through nginx;
        v1:     OpenAI's /v1/chat/completions everywhere (SSE), the gateway relaying to Ollama's
                /v1 (the client does not ask for usage: the gateway asks and drops that chunk),
                and as gateway-openai to an OpenAI-compatible upstream with the model rewritten."""
        def body(model):
            return json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "stream": True})

        targets = self.targets(gateway)
        runs = []
        for name, (base, key, _) in targets.items():
            if kind == "ollama":
                runs.append((name, base + "/api/chat", key, body("llama3"), False))
            elif kind == "openai" and name == "gateway":
                runs.append((name, base + "/api/chat", key, body("openai/mock"), False))
            elif kind == "openai":
                runs.append((name, base + V1_CHAT, key, body("mock"), True))
            else:
                runs.append((name, base + V1_CHAT, key, body("llama3"), True))
        if kind == "v1":
            base, key, _ = targets["gateway"]
            runs.append(("gateway-openai", base + V1_CHAT, key, body("openai/mock"), True))
        return runs

    def s4(self, gateway):
        count_1 = 5 if self.args.quick else 10
        count_64 = 64 if self.args.quick else 320
        for rnd in range(self.args.rounds):
            for kind in S4_KINDS:
                for conc, count in ((1, count_1), (64, count_64)):
                    for name, url, key, body, sse in self.s4_runs(gateway, kind):
                        # 64 token lines and the closing one (NDJSON: done; SSE: the finish
                        # event, before [DONE]), on the same schedule either way.
                        args = ["stream", "--url", url, "--body", body, "--concurrency", str(conc),
                                "--count", str(count), "--lines", "65", "--ca", str(self.ca)]
                        if key:
                            args += ["--header", f"Authorization: Bearer {key}"]
                        if sse:
                            args.append("--sse")
                        log(f"S4 round {rnd + 1} {kind} x{conc} {name}")
                        r = self.client(*args)
                        if r["stamped_lines"] != count * 64:
                            sys.exit(f"S4 {kind} x{conc} {name}: {r['stamped_lines']} of {count * 64} token lines "
                                     "carried the mock's stamp; the timing below would be wrong")
                        tag = f"{kind} x{conc}"
                        for k in ("ttft_p99_us", "gap_p99_us", "gap_max_us", "wrong_line_count", "merged_lines",
                                  "gaps_over_interval_plus_40ms", "unterminated_streams", "error_events",
                                  "line_delay_p99_us", "gap_stretch_p99_us", "stamped_lines"):
                            self.add("S4", name, f"{tag} {k}", r[k])

    def s5(self):
        gw = self.start_gateway("memory", upstream_port=self.slow_mock_port)
        body = json.dumps({"model": "llama3", "messages": [{"role": "user", "content": "hi"}], "stream": True})
        counts = [50] if self.args.quick else [500, 1000, 2000]
        idle = None
        for n in counts:
            log(f"S5 {n} open streams")
            r = self.client("hold", "--url", f"https://127.0.0.1:{gw.port}/api/chat", "--body", body,
                            "--count", str(n), "--pid", str(gw.pid), "--ca", str(self.ca),
                            "--settle-secs", str(settle_secs(self.args)),
                            "--header", f"Authorization: Bearer {BENCH_KEY}")
            idle = r["rss_idle_kib"] if idle is None else idle
            self.add("S5", "gateway", f"{n} held_kib", r["rss_held_kib"])
            self.add("S5", "gateway", f"{n} after_kib", r["rss_after_kib"])
        self.add("S5", "gateway", "idle_kib", idle)
        self.stop(gw)

    def s6(self):
        if self.args.quick:
            return
        log("S6 criterion translate bench")
        cmd = ["cargo", "bench", "--bench", "translate", "--", "--noplot"]
        COMMANDS.append(" ".join(cmd))
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True).stdout
        for name, value in re.findall(r"(?:sse_to_ndjson|v1_relay)/(\w+)\s+time:.*?\n\s+thrpt:\s+\[[^\]]*?\s([\d.]+ \w+/s)", out):
            self.results.setdefault("S6", {}).setdefault(name, {})["thrpt"] = [value]

    def s7(self, gateway):
        d = self.args.duration
        log("S7 one key far over its limit")
        metrics0 = self.allowed(gateway)
        t0 = time.time()
        r = self.wrk(f"https://127.0.0.1:{gateway.port}/api/chat", 64, d, LIMITED_KEY)
        elapsed = time.time() - t0
        allowed = self.allowed(gateway) - metrics0
        self.add("S7", "gateway", "responses_per_s", r["rps"])
        self.add("S7", "gateway", "non_2xx", r["non2xx"])
        self.add("S7", "gateway", "allowed", allowed)
        # The bucket: the burst, plus what refills during the load (wrk's -d; the wall time
        # around wrk, which includes its start and stop, is recorded too).
        self.add("S7", "gateway", "bucket", LIMITED_BURST + LIMITED_RPM * d / 60)
        self.add("S7", "gateway", "bucket_wall", LIMITED_BURST + LIMITED_RPM * elapsed / 60)

    def allowed(self, gateway):
        text = urllib.request.urlopen(f"http://127.0.0.1:{gateway.admin}/metrics").read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith("gateway_requests_total{") and 'key_id="limited"' in line and 'code="200"' in line:
                total += float(line.rsplit(" ", 1)[1])
        return total

    def add(self, scenario, target, metric, value):
        self.results.setdefault(scenario, {}).setdefault(target, {}).setdefault(metric, []).append(value)

    def run(self):
        try:
            self.setup()
            log("mock ceiling: direct runs double as the mock's own ceiling")
            only = set(self.args.only.split(","))
            gateway = self.start_gateway("all-on")
            if only & {"S2", "S2c", "S4"}:
                self.check_v1_chat(gateway)
            baseline = None
            if self.baseline_bin and "S2" in only:
                baseline = self.start_gateway("baseline", binary=self.baseline_bin)
            if only & {"S1", "S2", "S7"}:
                self.s1_s2(gateway, baseline)
            if baseline:
                self.stop(baseline)
            endpoints = {"S2g", "S2e", "S2c"} if "S2" in only else only & {"S2g", "S2e", "S2c"}
            if endpoints:
                self.s2_endpoints(gateway, endpoints)
            if "S4" in only:
                self.s4(gateway)
            if "S7" in only:
                self.s7(gateway)
            self.stop(gateway)
            if "S3" in only:
                self.s3()
            if "S5" in only:
                self.s5()
            if "S6" in only:
                self.s6()
        finally:
            self.stop_all()
        return self.results


def parse_wrk(out):
    def dur(text):
        m = re.match(r"([\d.]+)(us|ms|s)", text)
        value, unit = float(m.group(1)), m.group(2)
        return value * {"us": 1, "ms": 1e3, "s": 1e6}[unit]

    lat = dict(re.findall(r"^\s+(50|99)%\s+([\d.]+\w+)", out, re.M))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "p50_us": dur(lat["50"]), "p99_us": dur(lat["99"]), "rps": rps, "requests": requests,
        "non2xx": int(non2xx.group(1)) if non2xx else 0,
        "errors": sum(map(int, errors.groups())) if errors else 0,
    }


def settle_secs(args):
    """S5: how long after the streams end RSS is read (jemalloc's freed pages decay over 10 s)."""
    return 1 if args.quick else 15


def med(values):
    return statistics.median(values) if values else float("nan")


def spread(values):
    return f"{min(values):.0f}–{max(values):.0f}" if len(values) > 1 else ""


def machine():
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip() or "unknown"
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                           capture_output=True, text=True).stdout.strip()
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True).stderr.strip()
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return {
        "cores": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
        "commit": commit + (" (with uncommitted changes)" if dirty else ""),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nginx": nginx, "wrk": (wrk[0] if wrk else "wrk"),
    }


def verdict(ok):
    return "**pass**" if ok else "**MISS**"


def baseline_run(args):
    """How the baseline ran, for the run's description (empty without one)."""
    if not args.baseline:
        return ""
    config = ("the same configuration, token budgets included" if args.baseline_same_config
              else "no token budgets (options an older build may not know)")
    return f", and the baseline {args.baseline_label} in S2 with {config}"


def report(results, args):
    m = machine()
    r = results
    rows = []

    def v(s, t, k):
        return med(r.get(s, {}).get(t, {}).get(k, []))

    def vs(s, t, k):
        return r.get(s, {}).get(t, {}).get(k, [])

    def per_round(s, a, b, k):
        """`a`'s figure over `b`'s, round by round (the runs of a round are interleaved)."""
        return [x / y for x, y in zip(vs(s, a, k), vs(s, b, k)) if y]

    def ratio(values):
        if not values:
            return float("nan"), "no rounds"
        return med(values), f"{min(values):.2f}–{max(values):.2f}" if len(values) > 1 else "one round"

    # S1
    for q in ("p50_us", "p99_us"):
        g_add = v("S1", "gateway", q) - v("S1", "direct", q)
        n_add = v("S1", "nginx", q) - v("S1", "direct", q)
        ok = q == "p50_us" or (g_add <= 1.5 * max(n_add, 1) and g_add <= 250)
        rows.append(("S1", f"added latency {q[:3]} @1 in flight (µs)", f"{v('S1', 'direct', q):.0f}",
                     f"{n_add:+.0f} ({spread(vs('S1', 'nginx', q))})",
                     f"{g_add:+.0f} ({spread(vs('S1', 'gateway', q))})",
                     "p99: ≤1.5× nginx and ≤250 µs" if q == "p99_us" else "(reported)",
                     verdict(ok) if q == "p99_us" else ""))
    # The added p50, gateway against nginx, round by round (the direct run of the same round
    # is what both add to).
    added = [(gw - di) / (ng - di) for gw, ng, di in zip(vs("S1", "gateway", "p50_us"), vs("S1", "nginx", "p50_us"),
                                                          vs("S1", "direct", "p50_us")) if ng > di]
    if added:
        a_med, a_spread = ratio(added)
        rows.append(("S1", "added p50 @1 in flight, gateway / nginx (per round)", "", "1.00", f"{a_med:.2f} ({a_spread})",
                     "≤1.10", verdict(a_med <= 1.10)))
    if vs("S1", "bare", "p99_us"):
        ba = {q: v("S1", "bare", q) - v("S1", "direct", q) for q in ("p50_us", "p99_us")}
        rows.append(("S1", "bare actix-web + awc + rustls proxy: added latency p50 / p99 (µs)", "", "",
                     f"{ba['p50_us']:+.0f} / {ba['p99_us']:+.0f}", "(reported)", ""))
    # S2, S2g, S2e, S2c: throughput and CPU per request of each target, then the gateway's
    # three ratios (issue "Performance: features that cost less"), each the median of its
    # per-round ratios with their spread.
    g, n, d = v("S2", "gateway", "rps"), v("S2", "nginx", "rps"), v("S2", "direct", "rps")
    gc, nc = v("S2", "gateway", "cpu_us_per_req"), v("S2", "nginx", "cpu_us_per_req")
    for scenario, path in (("S2", "/api/chat"), ("S2g", "/api/generate"), ("S2c", V1_CHAT), ("S2e", "/api/embed")):
        if not vs(scenario, "gateway", "rps"):
            continue
        bare = bool(vs(scenario, "bare", "rps"))
        rows.append((scenario, f"{path} requests/s, 64 connections, keep-alive TLS (whole answers)"
                     + ("; bare proxy after the semicolon" if bare else ""),
                     f"{v(scenario, 'direct', 'rps'):.0f}" + (" (mock ceiling)" if scenario == "S2" else ""),
                     f"{v(scenario, 'nginx', 'rps'):.0f} ({spread(vs(scenario, 'nginx', 'rps'))})",
                     f"{v(scenario, 'gateway', 'rps'):.0f} ({spread(vs(scenario, 'gateway', 'rps'))})"
                     + (f"; {v(scenario, 'bare', 'rps'):.0f} ({spread(vs(scenario, 'bare', 'rps'))})" if bare else ""),
                     "(reported)", ""))
        rows.append((scenario, f"{path} CPU µs per request (proxy process, /proc)"
                     + ("; bare proxy after the semicolon" if bare else ""),
                     f"{v(scenario, 'direct', 'cpu_us_per_req'):.1f}", f"{v(scenario, 'nginx', 'cpu_us_per_req'):.1f}",
                     f"{v(scenario, 'gateway', 'cpu_us_per_req'):.1f}"
                     + (f"; {v(scenario, 'bare', 'cpu_us_per_req'):.1f}" if bare else ""), "(reported)", ""))
        if vs(scenario, "gateway", "cpu_user_us_per_req"):
            split = lambda who: (f"{v(scenario, who, 'cpu_user_us_per_req'):.1f} + "
                                 f"{v(scenario, who, 'cpu_sys_us_per_req'):.1f}")
            rows.append((scenario, f"{path} CPU µs per request, user + system"
                         + ("; bare proxy after the semicolon" if bare else ""),
                         split("direct"), split("nginx"), split("gateway") + (f"; {split('bare')}" if bare else ""),
                         "(reported)", ""))
        targeted = scenario != "S2e"
        for what, a, b, k, limit, higher in (("requests/s, gateway / bare proxy", "gateway", "bare", "rps", 0.85, True),
                                            ("requests/s, gateway / nginx", "gateway", "nginx", "rps", 0.9, True),
                                            ("CPU per request, gateway / nginx", "gateway", "nginx", "cpu_us_per_req",
                                             1.2, False)):
            values = per_round(scenario, a, b, k)
            if not values:
                continue
            r_med, r_spread = ratio(values)
            ok = r_med >= limit if higher else r_med <= limit
            rows.append((scenario, f"{path} {what} (per round)", "", "", f"{r_med:.2f} ({r_spread})",
                         (f"{'≥' if higher else '≤'}{limit}" if targeted else "(reported)"),
                         verdict(ok) if targeted else ""))
        if vs(scenario, "gateway-openai", "rps"):
            how = "relayed, its model rewritten" if scenario == "S2c" else "translated"
            rows.append((scenario, f"{path} to an OpenAI-compatible upstream, {how} (requests/s; CPU µs per request)",
                         "", "", f"{v(scenario, 'gateway-openai', 'rps'):.0f}; "
                         f"{v(scenario, 'gateway-openai', 'cpu_us_per_req'):.1f}", "(reported)", ""))

    if vs("S2", "baseline", "rps"):
        label = args.baseline_label
        br, bcpu = v("S2", "baseline", "rps"), v("S2", "baseline", "cpu_us_per_req")
        rows.append(("S2", f"this build against the baseline {label}, same rounds: requests/s "
                     f"(baseline {br:.0f}, {spread(vs('S2', 'baseline', 'rps'))})", "", "",
                     f"{g:.0f} / {br:.0f} = {g / br:.2f}", "≥0.95× baseline (no drop)", verdict(g >= 0.95 * br)))
        rows.append(("S2", f"this build against the baseline {label}: CPU µs per request", "", "",
                     f"{gc:.1f} / {bcpu:.1f} = {gc / bcpu:.2f}", "≤1.05× baseline", verdict(gc <= 1.05 * bcpu)))

    mock_bound = g >= 0.8 * d
    # S3
    on, off, k10 = v("S3", "all-on", "rps"), v("S3", "all-off", "rps"), v("S3", "10k-keys", "rps")
    if vs("S3", "all-on", "rps"):  # no rows when S3 was not run
        rows.append(("S3", "feature tax: all on / all off (requests/s)", "", "",
                     f"{on:.0f} / {off:.0f} = {on / off:.2f}", "≥0.9", verdict(on / off >= 0.9)))
        rows.append(("S3", "10,000 keys / 1 key (requests/s)", "", "", f"{k10:.0f} / {on:.0f} = {k10 / on:.2f}",
                     "within 5%", verdict(abs(k10 / on - 1) <= 0.05)))
    if vs("S3", "no-budgets", "rps"):
        nob = v("S3", "no-budgets", "rps")
        rows.append(("S3", "token budgets of key and team on / off (requests/s)", "", "",
                     f"{on:.0f} / {nob:.0f} = {on / nob:.2f}", "within 5%", verdict(on / nob >= 0.95)))
    # S4
    for kind in S4_KINDS:
        for conc in (1, 64):
            tag = f"{kind} x{conc}"
            if not vs("S4", "gateway", f"{tag} ttft_p99_us"):
                continue
            for target in ("gateway", "gateway-openai"):
                if not vs("S4", target, f"{tag} ttft_p99_us"):
                    continue
                what = tag + (", to an OpenAI-compatible upstream (model rewritten)" if target != "gateway" else "")
                for k, label, limit in (("ttft_p99_us", "added TTFT p99", 1000),
                                        ("gap_stretch_p99_us", "added gap p99, from the mock's stamps", 100),
                                        ("gap_p99_us", "gap p99 as received", None),
                                        ("line_delay_p99_us", "line delay p99, mock write to client read", None)):
                    gd = v("S4", target, f"{tag} {k}") - v("S4", "direct", f"{tag} {k}")
                    nd = v("S4", "nginx", f"{tag} {k}") - v("S4", "direct", f"{tag} {k}")
                    rows.append(("S4", f"{what}: {label} (µs)", f"{v('S4', 'direct', f'{tag} {k}'):.0f}", f"{nd:+.0f}",
                                 f"{gd:+.0f}", f"≤{limit} µs" if limit else "(reported)",
                                 verdict(gd <= limit) if limit else ""))
                # Absent from runs older than the SSE counts: counted as none.
                bad = sum(v("S4", target, f"{tag} {k}") if vs("S4", target, f"{tag} {k}") else 0
                          for k in ("wrong_line_count", "merged_lines", "gaps_over_interval_plus_40ms",
                                    "unterminated_streams", "error_events"))
                ends = "; streams not ended by [DONE], error events" if kind == "v1" else ""
                rows.append(("S4", f"{what}: lines lost / merged / delayed ≥40 ms{ends}", "", "", f"{bad:.0f}", "0",
                             verdict(bad == 0)))
    # S5
    idle = v("S5", "gateway", "idle_kib")
    counts = [50] if args.quick else [500, 1000, 2000]
    for c in counts:
        held, after = v("S5", "gateway", f"{c} held_kib"), v("S5", "gateway", f"{c} after_kib")
        per_1000 = (held - idle) / 1024 / c * 1000
        rows.append(("S5", f"RSS with {c} open TLS streams (MiB; per 1,000)", f"idle {idle / 1024:.1f}", "",
                     f"{held / 1024:.1f} ({per_1000:.1f} per 1,000)", "≤40 MiB per 1,000", verdict(per_1000 <= 40)))
        rows.append(("S5", f"RSS {settle_secs(args)} s after the {c} streams ended (MiB)", "", "", f"{after / 1024:.1f}",
                     "≤1.5× idle", verdict(after <= 1.5 * idle)))
    # S6
    s6 = r.get("S6", {})
    if s6:
        ours = s6.get("gateway_translate", {}).get("thrpt", ["?"])[0]
        base = s6.get("serde_json_value_baseline", {}).get("thrpt", ["?"])[0]
        ratio = to_mib(ours) / to_mib(base) if "?" not in (ours, base) else float("nan")
        rows.append(("S6", "SSE→NDJSON throughput vs serde_json::Value parse", "", base, f"{ours} ({ratio:.2f}×)",
                     "≥1.0×", verdict(ratio >= 1.0)))
        v1 = s6.get("gateway_v1_model_rewrite", {}).get("thrpt", [""])[0]
        if v1:
            rows.append(("S6", "/v1 SSE relay throughput, model rewritten in each event", "", "", v1, "(reported)", ""))
    # S7 (no rows when it was not run: `--only` without it)
    rej = v("S7", "gateway", "responses_per_s")
    allowed, bucket = v("S7", "gateway", "allowed"), v("S7", "gateway", "bucket")
    if vs("S7", "gateway", "responses_per_s"):
        rows.append(("S7", "429 path: responses/s for one key far over its limit", "", "",
                     f"{rej:.0f} ({rej / g:.2f}× proxied)", "≥1.5× proxied", verdict(rej >= 1.5 * g)))
        rows.append(("S7", "allowed vs bucket (burst + refill over wrk's -d)", "", "",
                     f"{allowed:.0f} vs {bucket:.0f} ({(allowed / bucket - 1) * 100:+.1f}%)", "within 1%",
                     verdict(abs(allowed / bucket - 1) <= 0.01)))

    lines = [
        "# Benchmarks",
        "",
        "Produced by `scripts/bench.sh` (the harness: scripts/bench.py, examples/mock_upstream.rs,",
        "examples/bench_client.rs, examples/bare_proxy.rs, benches/). Re-run it to reproduce; every",
        "figure below comes from the run described here.",
        "",
        "## Machine and run",
        "",
        f"- CPU: {m['cpu']}, {m['cores']} cores; kernel {m['kernel']}",
        f"- commit {m['commit']}, {m['date']}",
        f"- {m['nginx']}; {m['wrk']}",
        f"- rounds: {args.rounds} (interleaved direct / nginx / gateway, and bare in S1 and S2"
        + baseline_run(args)
        + "), "
        f"{args.duration} s per load run;"
        + (" **quick smoke run: figures not meaningful**" if args.quick else ""),
        f"- proxy under test pinned to CPU {PROXY_CPU}; load tools and the mock pinned to CPU {LOAD_CPU}",
        "- nginx: one worker, master_process off, the same ECDSA P-256 certificate, upstream keep-alive 128,",
        "  proxy_buffering and request buffering off, access_log off",
        "- gateway: one worker, every feature on: TLS, API key (Bearer), per-key limits and token budgets of",
        "  the key and its team high enough not to reject, allowlist, metrics (admin listener), request log",
        "  at info (JSON) to a file",
        "- direct: the same requests to the mock over plain HTTP (so the proxy columns include TLS)",
        "- bare (S1, S2, S2g, S2c, S2e, in the same rounds): examples/bare_proxy.rs, the required stack alone (actix-web,",
        "  rustls, the gateway's awc client, jemalloc; one worker) with no feature at all: what the",
        "  gateway costs above it is what its features cost",
        "",
        "## Scenarios",
        "",
        "- S1: one request in flight on /api/chat (whole answers); S2: 64 connections on /api/chat, requests/s and",
        "  the proxy's CPU per request; S2g, S2e: the same load on /api/generate and /api/embed, and translated by",
        "  the gateway to the mock's OpenAI side; S2c: the same load on OpenAI's POST /v1/chat/completions (no",
        "  `stream`, as the openai SDK sends it), relayed to Ollama's /v1 (the mock answers as Ollama's",
        "  compatibility layer does), and relayed to an OpenAI-compatible upstream with the model rewritten",
        "- S3: S2 on the gateway with every feature on, off, with 10,000 keys loaded, and without the token"
        " budgets (never refusing: their cost is reserve, settle, headers)",
        "- Ratios (S1, S2, S2g, S2c): each round runs every target back to back, so a ratio is taken within a",
        "  round and the table gives the median of the rounds' ratios with their spread (min–max)",
        "- S4: streams of 64 tokens 20 ms apart, 1 and 64 at once; each token stamped by the mock as it writes it.",
        "  `ollama`: /api/chat everywhere (NDJSON). `openai`: the gateway's /api/chat translated from the mock's",
        "  OpenAI side, against that side's SSE read direct and through nginx. `v1`: /v1/chat/completions",
        "  everywhere (SSE, one token per `data:` event, `data: [DONE]` last; the client does not ask for usage,",
        "  so the gateway's usage chunk must not reach it), and to an OpenAI-compatible upstream",
        "- S5: memory with many open streams; S6: the SSE→NDJSON translation and the /v1 relay's model",
        "  rewrite, throughput (criterion);",
        "  S7: the 429 path for one key far over its limit",
        "",
        "## Results",
        "",
        "Medians over rounds; spread (min–max over rounds) in parentheses where there were several.",
        "A ratio row is the median of the per-round ratios, their min–max in parentheses.",
        "\"direct\" is the mock alone: its S2 figure is the mock's own ceiling.",
        f"S2 gateway throughput is {'within 20% of' if mock_bound else 'clear of'} the mock's ceiling"
        + (" (mock-bound: read with care)." if mock_bound else "."),
        "",
        "| # | measure | direct | nginx (added) | gateway (added) | target | verdict |",
        "|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {' | '.join(str(c) for c in row)} |" for row in rows]
    lines += ["", "## Commands", "", "```"]
    seen = []
    for c in COMMANDS:
        generic = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT", c)
        if generic not in seen:
            seen.append(generic)
    lines += seen
    lines += ["```", "", "## Raw results", "", "```json", json.dumps(results, indent=1, default=str), "```", ""]
    return "\n".join(lines)


def to_mib(text):
    value, unit = text.split()
    return float(value) * {"KiB/s": 1 / 1024, "MiB/s": 1, "GiB/s": 1024}[unit]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--duration", type=int, default=10, help="seconds per load run")
    ap.add_argument("--quick", action="store_true", help="a few seconds: checks the harness works, not its figures")
    ap.add_argument("--debug", action="store_true", help="use target/debug binaries")
    ap.add_argument("--out", default=str(ROOT / "BENCHMARKS.md"))
    ap.add_argument("--only", default="S1,S2,S3,S4,S5,S6,S7", help="comma-separated scenarios to run; S2 includes S2g, S2e and S2c, "
                    "which can also be named alone")
    ap.add_argument("--baseline", help="another build of the gateway (an earlier commit's binary) "
                    "to run S2 against in the same rounds, so a change's effect on S2 is read in one run")
    ap.add_argument("--baseline-label", help="what to call the baseline in BENCHMARKS.md (default: its file name)")
    ap.add_argument("--baseline-same-config", action="store_true",
                    help="the baseline knows every option of this build: run it with the very same "
                    "configuration (token budgets, state store) instead of the reduced one for older builds")
    args = ap.parse_args()
    if args.baseline and not args.baseline_label:
        args.baseline_label = Path(args.baseline).name
    if args.quick:
        args.rounds, args.duration = 1, 1
    for tool in ("nginx", "wrk", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"{tool} is required (Debian: apt-get install nginx-light wrk util-linux)")
    raise_nofile()
    bench = Bench(args)
    results = bench.run()
    Path(args.out).write_text(report(results, args))
    log(f"wrote {args.out}")


if __name__ == "__main__":
    main()

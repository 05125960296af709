"""Real clients and servers for perf/realworld: nginx as the HTTP backend, iperf3 as the bulk
backend, and the two load generators in front (wrk, iperf3 -c), with their results parsed.

It starts processes only through ringtun_perf.PROCS (so nothing outlives the script), listens on
loopback only, and never decides what a number means: wrk errors, short bodies and iperf3
failures are returned to the caller, which flags them.
"""

import http.client
import json
import os
import re
import socket
import subprocess
import time

import ringtun_perf as rp

BODY_BYTES = 512

# wrk's summary as one JSON line (latencies in µs); its text output has no p99.9 and rounds.
WRK_LUA = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '{"requests":%d,"duration_us":%d,"bytes":%d,' ..
    '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
    '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p99_9":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean))
end
"""


def body():
    """The BODY_BYTES-byte response body: letters only (nothing nginx would interpolate)."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    return (letters * (BODY_BYTES // len(letters) + 1))[:BODY_BYTES]


def tool_versions(paths):
    """{name: version string} of nginx, wrk and iperf3 (informational)."""
    out = {}
    for name, path in paths.items():
        try:
            r = subprocess.run([path, "-v" if name == "nginx" else "--version"],
                               capture_output=True, text=True, timeout=10)
            m = re.search(r"(\d+\.\d+(\.\d+)?)", r.stdout + r.stderr)
            out[name] = f"{name} {m.group(1)}" if m else name
        except Exception:  # noqa: BLE001 - informational only
            out[name] = name
    return out


# ---------------------------------------------------------------------------------------------
# CPU time


def _children(pid):
    kids = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def cpu_seconds(pids):
    """utime + stime (all threads, live and exited) of `pids` and their descendants, in s."""
    tick = os.sysconf("SC_CLK_TCK")
    total, seen, todo = 0, set(), list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
        except (OSError, IndexError, ValueError):
            continue
        todo += _children(pid)
    return total / tick


def thread_cpu_seconds(pid, name):
    """CPU time (ns precision, from /proc schedstat) of `pid`'s live threads named `name`, in s;
    None when the process is gone."""
    total, found = 0, False
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return None
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != name:
                    continue
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
            found = True
        except (OSError, IndexError, ValueError):
            continue
    return total / 1e9 if found else None


# ---------------------------------------------------------------------------------------------
# backends


def wait_listening(addr, proc, timeout=10.0):
    host, port = addr.rsplit(":", 1)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.name} exited with {proc.returncode} (see {proc.log_path})")
        try:
            with socket.create_connection((host, int(port)), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{proc.name} did not listen on {addr} within {timeout}s")


class Nginx:
    """nginx with its own configuration in `workdir`/nginx: one worker, loopback, no access log,
    `location /` answering 200 with a BODY_BYTES-byte body; keep-alive connections are never
    closed by the request count (keepalive_requests 1,000,000), only by `Connection: close`."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.dir = os.path.join(workdir, "nginx")
        self.proc = None
        self.addr = None

    def config(self, port):
        import resource

        d = self.dir
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        temps = "\n".join(f"    {k}_temp_path {d}/tmp/{k};"
                          for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"))
        return f"""# generated by perf/realworld
daemon off;
master_process on;
worker_processes 1;
worker_rlimit_nofile {nofile};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{
    worker_connections {min(16384, nofile // 2)};
}}
http {{
    access_log off;
{temps}
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            default_type text/plain;
            return 200 "{body()}";
        }}
    }}
}}
"""

    def start(self):
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        port = rp.free_port()
        conf = os.path.join(self.dir, "nginx.conf")
        with open(conf, "w") as f:
            f.write(self.config(port))
        self.addr = f"127.0.0.1:{port}"
        self.proc = rp.PROCS.start(
            "nginx", [self.binary, "-p", self.dir, "-c", conf, "-e", f"{self.dir}/error.log"],
            os.path.join(self.dir, "nginx.log"))
        wait_listening(self.addr, self.proc)
        status, got = http_get(self.addr)
        if status != 200 or got != body().encode():
            raise RuntimeError(f"nginx at {self.addr} answered {status} with {len(got)} bytes")


class Iperf3Server:
    """`iperf3 -s` on a loopback port; it serves one test at a time (the caller runs them in
    turn) and is restarted on the same port after a failed test, which can leave it stuck."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.log_path = os.path.join(workdir, "iperf3-server.log")
        self.port = rp.free_port()
        self.addr = f"127.0.0.1:{self.port}"
        self.proc = None

    def _listening_lines(self):
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read().count(f"Server listening on {self.port}")
        except OSError:
            return 0

    def start(self, timeout=10.0):
        # --rcv-timeout: a test whose data stops (a broken tunnel) ends after 5 s, not 120 s.
        # Ready when it says so in its log (a probing connection would count as a failed test).
        before = self._listening_lines()
        self.proc = rp.PROCS.start(
            "iperf3-server",
            [self.binary, "-s", "-B", "127.0.0.1", "-p", str(self.port), "--rcv-timeout", "5000",
             "--forceflush"],
            self.log_path)
        deadline = time.time() + timeout
        while self._listening_lines() <= before:
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"iperf3 -s did not listen on {self.addr} (see {self.log_path})")
            time.sleep(0.05)

    def restart(self):
        rp.PROCS.stop([self.proc])
        self.start()


def http_get(addr, timeout=3.0):
    host, port = addr.rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request("GET", "/")
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


class RealBackends:
    """What the systems of ringtun_perf tunnel to here: `http` (nginx) and `iperf` (iperf3 -s)."""

    def __init__(self, nginx, iperf_server, iperf3):
        self.nginx = nginx
        self.iperf_server = iperf_server
        self.iperf3 = iperf3
        self.services = {"http": nginx.addr, "iperf": iperf_server.addr}

    def probe(self, system, timeout=20.0):
        """Waits until a GET through the system returns the whole body and a 1 MiB iperf3 test
        through it completes."""
        deadline = time.time() + timeout
        last = None
        while True:
            try:
                status, got = http_get(system.fronts["http"])
                if status == 200 and got == body().encode():
                    break
                last = f"status {status}, {len(got)} bytes"
            except (OSError, http.client.HTTPException) as e:
                last = e
            if time.time() > deadline:
                raise RuntimeError(f"http via {system.fronts['http']}: no good answer within "
                                   f"{timeout}s ({last})")
            time.sleep(0.1)
        while True:
            doc = iperf3_run(self.iperf3, system.fronts["iperf"], ["-n", "1M"], timeout=15)
            if not doc.get("error"):
                return
            last = doc["error"]
            self.iperf_server.restart()
            if time.time() > deadline:
                raise RuntimeError(f"iperf3 via {system.fronts['iperf']}: no test completed "
                                   f"within {timeout}s ({last})")
            time.sleep(0.2)


# ---------------------------------------------------------------------------------------------
# load generators


def wrk_run(wrk, script, addr, connections, secs, close=False, timeout_s=5):
    """`wrk -t1 -cN -dS` against http://addr/ (with `Connection: close` when `close`); returns
    the summary: requests, rps, latency_us, errors, bytes_per_response."""
    argv = [wrk, "-t1", f"-c{connections}", f"-d{int(secs)}s", "--timeout", f"{timeout_s}s",
            "-s", script]
    if close:
        argv += ["-H", "Connection: close"]
    argv.append(f"http://{addr}/")
    r = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60,
                       preexec_fn=rp._child_setup)
    line = next((x for x in reversed(r.stdout.splitlines()) if x.startswith("{")), None)
    if not line:
        raise RuntimeError(f"wrk exited {r.returncode} without a summary: "
                           f"{(r.stderr or r.stdout).strip()[-300:]}")
    d = json.loads(line)
    d["rps"] = d["requests"] / (d["duration_us"] / 1e6) if d["duration_us"] else 0.0
    d["bytes_per_response"] = d["bytes"] / d["requests"] if d["requests"] else 0.0
    return d


def wrk_problems(d):
    """What makes a wrk result untrustworthy: errors, no requests, responses without the body."""
    bad = [f"{k} {v}" for k, v in d["errors"].items() if v]
    if not d["requests"]:
        bad.append("no request completed")
    elif d["bytes_per_response"] < BODY_BYTES:
        bad.append(f"{d['bytes_per_response']:.0f} bytes per response (< {BODY_BYTES}-byte body)")
    return bad


def iperf3_run(iperf3, addr, extra, timeout):
    """`iperf3 -c` against addr with `extra` arguments, -J; returns the parsed JSON, or
    {"error": why}."""
    host, port = addr.rsplit(":", 1)
    argv = [iperf3, "-c", host, "-p", port, "-J", "--connect-timeout", "5000", *extra]
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                           preexec_fn=rp._child_setup)
    except subprocess.TimeoutExpired:
        return {"error": f"iperf3 client did not finish within {timeout}s"}
    try:
        doc = json.loads(r.stdout)
    except json.JSONDecodeError:
        return {"error": f"iperf3 exited {r.returncode}: {(r.stderr or r.stdout).strip()[-200:]}"}
    if r.returncode != 0 and not doc.get("error"):
        doc["error"] = f"iperf3 exited {r.returncode}"
    return doc


def iperf3_load(iperf3, addr, streams, secs, omit_secs):
    """A bulk test client -> server (cloud -> edge through a tunnel): `streams` parallel TCP
    streams for `secs` seconds after `omit_secs` of unmeasured start; returns {gbps, bytes,
    run_bytes, retransmits} or {"error": why}."""
    doc = iperf3_run(iperf3, addr, ["-P", str(streams), "-t", str(int(secs)),
                                    "-O", str(int(omit_secs))], timeout=secs + omit_secs + 60)
    if doc.get("error"):
        return {"error": doc["error"]}
    try:
        recv = doc["end"]["sum_received"]
        sent = doc["end"].get("sum_sent", {})
        # Bytes of the whole run, omitted start included: what the CPU time is spent on.
        run_bytes = sum(iv["sum"]["bytes"] for iv in doc.get("intervals", []))
        return {"gbps": recv["bits_per_second"] / 1e9, "bytes": recv["bytes"],
                "run_bytes": run_bytes or recv["bytes"], "retransmits": sent.get("retransmits")}
    except (KeyError, TypeError) as e:
        return {"error": f"iperf3 JSON without end.sum_received ({e})"}

"""Shared helpers of perf/compare, perf/profile, perf/cost and perf/realworld: process
supervision, free ports, tool installs (cargo, apt-get), the bench backends and the tunnel systems
under test (ringtun on both I/O backends, rathole, bore) on loopback, for any set of services.

Every process is started in its own session with PR_SET_PDEATHSIG=SIGKILL, registered, and killed
by `Procs.kill_all()` (called from atexit and from the SIGINT/SIGTERM/SIGHUP handlers), so nothing
survives the script even when it is interrupted.
"""

import atexit
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(REPO, "perf", "out")
TOKEN = "perf-token"


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# processes


def _child_setup():
    # Die with the parent, whatever kills it (PR_SET_PDEATHSIG = 1).
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


class Procs:
    """Every long-running process this script started."""

    def __init__(self):
        self.procs = []
        self._installed = False

    def install_handlers(self):
        if self._installed:
            return
        self._installed = True
        atexit.register(self.kill_all)

        def on_signal(signum, _frame):
            self.kill_all()
            sys.exit(128 + signum)

        for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(s, on_signal)

    def start(self, name, argv, log_path, env=None, stdout_pipe=False):
        """Starts argv; stderr (and stdout unless piped) go to log_path."""
        os.makedirs(os.path.dirname(log_path), exist_ok=True)
        logf = open(log_path, "ab")
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout_pipe else logf,
            stderr=logf,
            env=env,
            start_new_session=True,
            preexec_fn=_child_setup,
        )
        p.name = name
        p.log_path = log_path
        self.procs.append(p)
        return p

    def stop(self, procs, grace=3.0):
        """SIGTERM to each process group, SIGKILL after `grace` seconds."""
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.time() + grace
        for p in procs:
            while p.poll() is None and time.time() < deadline:
                time.sleep(0.02)
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait()
        for p in procs:
            if p in self.procs:
                self.procs.remove(p)

    def kill_all(self):
        self.stop(list(self.procs), grace=2.0)


PROCS = Procs()


def free_port():
    """A port the OS considers free right now (bound to port 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port):
    """Nobody listens on `port` (TIME_WAIT leftovers do not count, as for any server)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def read_line_matching(proc, pattern, timeout, also_file=None):
    """Reads proc.stdout (a pipe) until a line matches `pattern`; returns the match."""
    rx = re.compile(pattern)
    deadline = time.time() + timeout
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    buf = b""
    while time.time() < deadline:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            chunk = None
        if chunk:
            buf += chunk
            m = rx.search(buf.decode(errors="replace"))
            if m:
                return m
        elif chunk == b"" or proc.poll() is not None:
            break
        else:
            time.sleep(0.02)
        if also_file and os.path.exists(also_file):
            with open(also_file, errors="replace") as f:
                m = rx.search(f.read())
            if m:
                return m
    raise RuntimeError(
        f"{proc.name}: no line matching {pattern!r} within {timeout}s "
        f"(output: {buf.decode(errors='replace')[-300:]!r})"
    )


def drain_to_file(proc, path):
    """Keeps reading a piped stdout into `path` so the process never blocks on a full pipe."""
    import threading

    fd = proc.stdout.fileno()
    os.set_blocking(fd, True)

    def run():
        with open(path, "ab") as f:
            while True:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    return
                if not chunk:
                    return
                f.write(chunk)

    threading.Thread(target=run, daemon=True).start()


def raise_nofile(want=65536):
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ---------------------------------------------------------------------------------------------
# build and tools


def target_dir():
    return os.environ.get("CARGO_TARGET_DIR") or os.path.join(REPO, "target")


def build_ringtun():
    log("cargo build --release")
    r = subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=REPO)
    if r.returncode != 0:
        raise SystemExit("perf: cargo build --release failed")
    return os.path.join(target_dir(), "release", "ringtun")


def find_tool(name):
    p = shutil.which(name)
    if p:
        return p
    cand = os.path.join(os.path.expanduser("~"), ".cargo", "bin", name)
    return cand if os.access(cand, os.X_OK) else None


def ensure_cargo_tool(binary, install_args, allow_install=True):
    """Returns (path, None) or (None, reason)."""
    p = find_tool(binary)
    if p:
        return p, None
    if not allow_install:
        return None, f"`{binary}` not installed (--no-install)"
    log(f"installing {binary}: cargo install {' '.join(install_args)}")
    r = subprocess.run(
        ["cargo", "install", *install_args], capture_output=True, text=True
    )
    p = find_tool(binary)
    if r.returncode != 0 or not p:
        tail = (r.stderr or r.stdout or "").strip().splitlines()[-1:] or ["?"]
        return None, f"`cargo install {' '.join(install_args)}` failed: {tail[0][:160]}"
    return p, None


_APT_UPDATED = False


def ensure_apt_tool(binary, package, allow_install=True):
    """Returns (path, None) or (None, reason); installs Debian's `package` with apt-get when
    `binary` is missing (as root; `apt-get update` once per run; services are not started)."""
    global _APT_UPDATED

    def which():
        return shutil.which(binary) or next(
            (c for c in (f"/usr/sbin/{binary}", f"/usr/bin/{binary}") if os.access(c, os.X_OK)),
            None)

    p = which()
    if p:
        return p, None
    if not allow_install:
        return None, f"`{binary}` not installed (--no-install)"
    if os.geteuid() != 0:
        return None, f"`{binary}` missing; install Debian's {package} (apt-get needs root)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    if not _APT_UPDATED:
        log("apt-get update")
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env)
        _APT_UPDATED = True
    log(f"installing {binary}: apt-get install -y {package}")
    r = subprocess.run(["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
                       capture_output=True, text=True, env=env)
    p = which()
    if r.returncode != 0 or not p:
        tail = (r.stderr or r.stdout or "").strip().splitlines()[-1:] or ["?"]
        return None, f"`apt-get install {package}` failed: {tail[0][:160]}"
    return p, None


def tool_version(path):
    """`NAME VERSION` from `--version` (rathole prints its version on a later line)."""
    name = os.path.basename(path)
    try:
        r = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10)
        m = re.search(r"(\d+\.\d+\.\d+\S*)", r.stdout + r.stderr)
        return f"{name} {m.group(1)}" if m else name
    except Exception:  # noqa: BLE001 - informational only
        return name


# ---------------------------------------------------------------------------------------------
# load generator


def bench(ringtun, mode, target, extra, timeout):
    """Runs `ringtun bench MODE --json` and returns the parsed JSON (raises on failure)."""
    argv = [ringtun, "bench", mode, "--target", target, "--json", "--no-progress", *extra]
    r = subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, preexec_fn=_child_setup
    )
    out = r.stdout.strip()
    if not out:
        raise RuntimeError(
            f"bench {mode} exited {r.returncode}: {r.stderr.strip()[-300:]}"
        )
    doc = json.loads(out.splitlines()[-1])
    return doc


def probe_echo(addr, timeout=20.0):
    """Waits until a 64-byte message comes back through `addr`."""
    host, port = addr.rsplit(":", 1)
    deadline = time.time() + timeout
    last = None
    msg = b"p" * 64
    while time.time() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=2) as s:
                s.settimeout(3)
                s.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    chunk = s.recv(len(msg) - len(got))
                    if not chunk:
                        raise ConnectionError("closed before echo")
                    got += chunk
                if got == msg:
                    return
        except OSError as e:
            last = e
        time.sleep(0.1)
    raise RuntimeError(f"{addr} did not echo within {timeout}s ({last})")


def probe_sink(ringtun, addr, timeout=20.0):
    """Waits until a small verified one-way transfer to the sink succeeds through `addr`."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            doc = bench(
                ringtun,
                "throughput",
                addr,
                ["--mode", "one-way", "--bytes", "65536", "--io-timeout-ms", "3000"],
                timeout=15,
            )
            if doc.get("ok"):
                return
            last = doc.get("failures")
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"{addr} did not reach the sink within {timeout}s ({last})")


class Backends:
    """One echo and one sink backend (ringtun bench echo / sink), shared by every system.

    What a system needs of its backends (perf/realworld has its own): `services`, an ordered
    {name: backend address} that each system tunnels one frontend to, and `probe(system)`, which
    waits until every one of the system's frontends (`system.fronts`) carries traffic."""

    def __init__(self, ringtun, logdir):
        self.ringtun = ringtun
        self.echo_proc = PROCS.start(
            "echo",
            [ringtun, "bench", "echo", "--listen", "127.0.0.1:0"],
            os.path.join(logdir, "backend-echo.log"),
            stdout_pipe=True,
        )
        self.sink_proc = PROCS.start(
            "sink",
            [ringtun, "bench", "sink", "--listen", "127.0.0.1:0"],
            os.path.join(logdir, "backend-sink.log"),
            stdout_pipe=True,
        )
        self.echo = read_line_matching(self.echo_proc, r"listening on (\S+)", 10).group(1)
        self.sink = read_line_matching(self.sink_proc, r"listening on (\S+)", 10).group(1)
        drain_to_file(self.echo_proc, os.path.join(logdir, "backend-echo.log"))
        drain_to_file(self.sink_proc, os.path.join(logdir, "backend-sink.log"))
        self.services = {"echo": self.echo, "sink": self.sink}

    def probe(self, system):
        probe_echo(system.fronts["echo"])
        probe_sink(self.ringtun, system.fronts["sink"])


# ---------------------------------------------------------------------------------------------
# systems


TLS_PASSWORD = "ringtun-perf"


def tls_material(workdir):
    """A CA and a `localhost` server certificate signed by it (PEM), plus the same identity as
    PKCS#12 for rathole; generated once per work directory with the openssl CLI."""
    d = os.path.join(workdir, "tls")
    files = {
        "ca": os.path.join(d, "ca.pem"),
        "cert": os.path.join(d, "server.pem"),
        "key": os.path.join(d, "server.key"),
        "p12": os.path.join(d, "server.p12"),
    }
    if all(os.path.exists(f) for f in files.values()):
        return files
    os.makedirs(d, exist_ok=True)
    ca_key = os.path.join(d, "ca.key")
    csr = os.path.join(d, "server.csr")
    ext = os.path.join(d, "san.ext")
    with open(ext, "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", ca_key, "-out", files["ca"],
        "-days", "2", "-subj", "/CN=ringtun perf CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", files["key"], "-out", csr,
        "-subj", "/CN=localhost")
    run("x509", "-req", "-in", csr, "-CA", files["ca"], "-CAkey", ca_key, "-CAcreateserial",
        "-out", files["cert"], "-days", "2", "-extfile", ext)
    run("pkcs12", "-export", "-out", files["p12"], "-inkey", files["key"], "-in", files["cert"],
        "-certfile", files["ca"], "-passout", f"pass:{TLS_PASSWORD}")
    return files


class System:
    """A running tunnel (or none): where its frontends are ({service: address}, one per service of
    the backends; `echo` and `sink` name those of the bench backends), and its processes."""

    name = "?"
    label = "?"

    def __init__(self):
        self.fronts = {}
        self.echo = None
        self.sink = None
        self.procs = []
        self.pids = []  # processes whose RSS counts for the idle-session memory
        # None, or a function (tunnel port, workdir, name) -> the port the agent/client dials
        # instead (perf/slowlink puts a delaying relay there).
        self.link = None

    def dial_port(self, tunnel, workdir):
        """The port the edge side dials to reach the tunnel port (through the link, if any)."""
        return self.link(tunnel, workdir, self.name) if self.link else tunnel

    def start(self, backends, workdir):
        raise NotImplementedError

    def check_alive(self):
        """Raises with the last log line of any of this system's processes that has exited."""
        for p in self.procs:
            if p.poll() is not None:
                tail = ""
                try:
                    with open(p.log_path, errors="replace") as f:
                        lines = [x.strip() for x in f if x.strip()]
                    tail = lines[-1] if lines else ""
                except OSError:
                    pass
                raise RuntimeError(f"{p.name} exited with {p.returncode}: {tail[:200]}")

    def set_fronts(self, fronts):
        self.fronts = dict(fronts)
        self.echo = self.fronts.get("echo")
        self.sink = self.fronts.get("sink")

    def ready(self, backends):
        """Waits until every frontend carries traffic to its backend."""
        time.sleep(0.2)
        self.check_alive()
        try:
            backends.probe(self)
        except RuntimeError:
            self.check_alive()
            raise

    def stop(self):
        PROCS.stop(self.procs)
        self.procs = []
        self.pids = []


class Direct(System):
    name = "direct"
    label = "direct (no tunnel)"

    def start(self, backends, workdir):
        self.set_fronts(backends.services)


class Ringtun(System):
    """ringtun server + agent; one cluster per service (echo and sink for perf/compare), one
    agent serving them all."""

    def __init__(self, ringtun, io_backend, connection_num=8, workers=0, tls=False, splice=True):
        super().__init__()
        self.ringtun = ringtun
        self.io_backend = io_backend
        self.connection_num = connection_num
        self.workers = workers
        self.tls = tls
        self.tls_files = None
        self.splice = splice
        self.name = f"ringtun-{io_backend}" + ("-tls" if tls else "") + ("" if splice else "-copy")
        self.label = f"ringtun ({'io_uring' if io_backend == 'uring' else io_backend})" + (
            " TLS" if tls else "") + ("" if splice else ", no splice")
        self.server = None
        self.agent = None

    def configs(self, services, tunnel, fronts, dial=None):
        """Server and agent configuration: `services` {name: backend address}, `fronts` {name:
        frontend port}; the agent dials port `dial` (default: the tunnel port)."""
        dial = dial or tunnel
        clusters, listeners, tunnels = [], [], []
        for svc, backend in services.items():
            front = fronts[svc]
            clusters.append(
                {
                    "name": f"perf-{svc}",
                    "lb_type": "round_robin",
                    "credential_policy": "token",
                    "credentials": [TOKEN],
                    "frontends": [{"address": f"127.0.0.1:{front}"}],
                    "pool_wait_ms": 5000,
                }
            )
            listeners.append({"name": svc, "backend": backend})
            tunnels.append(
                {
                    "enable": True,
                    "connection_num": self.connection_num,
                    "cluster": f"perf-{svc}",
                    "hosting_listener": svc,
                    "server_list": [f"127.0.0.1:{dial}"],
                    "reconnect_base_duration_ms": 100,
                    "reconnect_max_duration_ms": 1000,
                    "credential_policy": "token",
                    "credential": TOKEN,
                }
            )
        server = {
            "workers": self.workers,
            "io_backend": self.io_backend,
            "tunnel_listener": {"address": f"127.0.0.1:{tunnel}"},
            "clusters": clusters,
        }
        if self.tls_files:
            server["tunnel_listener"]["tls_context"] = {
                "cert_chain_file": self.tls_files["cert"],
                "private_key_file": self.tls_files["key"],
            }
            for t in tunnels:
                t["tls_context"] = {"ca_file": self.tls_files["ca"], "server_name": "localhost"}
        agent = {
            "host_name": "perf-agent",
            "workers": self.workers,
            "io_backend": self.io_backend,
            "listeners": listeners,
            "tunnels": tunnels,
        }
        if not self.splice:
            server["splice_pipe_bytes"] = agent["splice_pipe_bytes"] = 0
        return server, agent

    def start(self, backends, workdir):
        if self.tls:
            self.tls_files = tls_material(workdir)
        tunnel = free_port()
        fronts = {svc: free_port() for svc in backends.services}
        server, agent = self.configs(backends.services, tunnel, fronts,
                                     self.dial_port(tunnel, workdir))
        sp = os.path.join(workdir, f"{self.name}-server.json")
        ap = os.path.join(workdir, f"{self.name}-agent.json")
        with open(sp, "w") as f:
            json.dump(server, f, indent=2)
        with open(ap, "w") as f:
            json.dump(agent, f, indent=2)
        env = dict(os.environ, RUST_LOG="warn")
        self.server = PROCS.start(
            f"{self.name}-server",
            [self.ringtun, "server", "--config", sp],
            os.path.join(workdir, f"{self.name}-server.log"),
            env=env,
        )
        self.agent = PROCS.start(
            f"{self.name}-agent",
            [self.ringtun, "agent", "--config", ap],
            os.path.join(workdir, f"{self.name}-agent.log"),
            env=env,
        )
        self.procs = [self.agent, self.server]
        self.pids = [self.server.pid, self.agent.pid]
        self.set_fronts({svc: f"127.0.0.1:{port}" for svc, port in fronts.items()})
        self.ready(backends)


class Rathole(System):
    name = "rathole"
    label = "rathole"

    def __init__(self, binary, ringtun, tls=False):
        super().__init__()
        self.binary = binary
        self.ringtun = ringtun
        self.tls = tls
        if tls:
            self.name = "rathole-tls"
            self.label = "rathole TLS"

    def start(self, backends, workdir):
        control = free_port()
        fronts = {svc: free_port() for svc in backends.services}
        server_tls, client_tls = [], []
        if self.tls:
            files = tls_material(workdir)
            server_tls = [
                "[server.transport]",
                'type = "tls"',
                "[server.transport.tls]",
                f'pkcs12 = "{files["p12"]}"',
                f'pkcs12_password = "{TLS_PASSWORD}"',
                "",
            ]
            client_tls = [
                "[client.transport]",
                'type = "tls"',
                "[client.transport.tls]",
                f'trusted_root = "{files["ca"]}"',
                'hostname = "localhost"',
                "",
            ]
        server = [
            "[server]",
            f'bind_addr = "127.0.0.1:{control}"',
            "",
            *server_tls,
        ]
        for svc, port in fronts.items():
            server += [f"[server.services.{svc}]", f'token = "{TOKEN}"',
                       f'bind_addr = "127.0.0.1:{port}"', ""]
        client = [
            "[client]",
            f'remote_addr = "127.0.0.1:{self.dial_port(control, workdir)}"',
            "",
            *client_tls,
        ]
        for svc, backend in backends.services.items():
            client += [f"[client.services.{svc}]", f'token = "{TOKEN}"',
                       f'local_addr = "{backend}"', ""]
        sp = os.path.join(workdir, f"{self.name}-server.toml")
        cp = os.path.join(workdir, f"{self.name}-client.toml")
        with open(sp, "w") as f:
            f.write("\n".join(server) + "\n")
        with open(cp, "w") as f:
            f.write("\n".join(client) + "\n")
        env = dict(os.environ, RUST_LOG="warn")
        s = PROCS.start(
            f"{self.name}-server",
            [self.binary, "--server", sp],
            os.path.join(workdir, f"{self.name}-server.log"),
            env=env,
        )
        c = PROCS.start(
            f"{self.name}-client",
            [self.binary, "--client", cp],
            os.path.join(workdir, f"{self.name}-client.log"),
            env=env,
        )
        self.procs = [c, s]
        self.pids = [s.pid, c.pid]
        self.set_fronts({svc: f"127.0.0.1:{port}" for svc, port in fronts.items()})
        self.ready(backends)


class HaproxyChain(System):
    """A reference, not a tunnel: two HAProxy TCP relays in series (cloud relay -> edge relay ->
    backend), the same three loopback TCP hops a tunnel's session crosses, with no tunnel
    protocol, no reverse dial and no pool. Each relay runs `nbthread` threads (2: one per core,
    as ringtun's `workers: 0`) and opens its next hop per client connection, so a short
    connection pays a handshake on the middle hop that a tunnel's pooled data connections do not;
    on keep-alive and bulk it shows what a mature event-driven relay pays for the topology."""

    name = "haproxy-chain"
    label = "2 × HAProxy (reference)"

    def __init__(self, binary, threads=2):
        super().__init__()
        self.binary = binary
        self.threads = threads

    def _config(self, routes):
        lines = [
            "global",
            f"    nbthread {self.threads}",
            "    maxconn 4000",
            "defaults",
            "    mode tcp",
            "    timeout connect 5s",
            "    timeout client 120s",
            "    timeout server 120s",
            "    option splice-auto",
        ]
        for i, (port, target) in enumerate(routes):
            lines += [f"listen r{i}", f"    bind 127.0.0.1:{port}", f"    server s{i} {target}"]
        return "\n".join(lines) + "\n"

    def start(self, backends, workdir):
        middle = {svc: free_port() for svc in backends.services}
        fronts = {svc: free_port() for svc in backends.services}
        edge = [(middle[svc], backend) for svc, backend in backends.services.items()]
        cloud = [(fronts[svc], f"127.0.0.1:{middle[svc]}") for svc in backends.services]
        procs = []
        for role, routes in (("edge", edge), ("cloud", cloud)):
            path = os.path.join(workdir, f"{self.name}-{role}.cfg")
            with open(path, "w") as f:
                f.write(self._config(routes))
            procs.append(PROCS.start(f"{self.name}-{role}", [self.binary, "-db", "-f", path],
                                     os.path.join(workdir, f"{self.name}-{role}.log")))
        self.procs = procs
        self.pids = [p.pid for p in procs]
        self.set_fronts({svc: f"127.0.0.1:{port}" for svc, port in fronts.items()})
        self.ready(backends)


BORE_CONTROL_PORT = 7835  # fixed in bore (bore_cli::shared::CONTROL_PORT); cannot be changed


class Bore(System):
    name = "bore"
    label = "bore"

    def __init__(self, binary, ringtun):
        super().__init__()
        self.binary = binary
        self.ringtun = ringtun

    def start(self, backends, workdir):
        if not port_is_free(BORE_CONTROL_PORT):
            raise RuntimeError(
                f"bore's fixed control port {BORE_CONTROL_PORT} is in use on this machine"
            )
        # Every system runs with warnings-only logging (bore logs several info lines per
        # connection, which would tax it in the connect test). Tunnel ports are drawn by bore at
        # random from a range below the kernel's ephemeral range; bore retries on collisions.
        quiet = dict(os.environ, RUST_LOG="warn")
        s = PROCS.start(
            "bore-server",
            [self.binary, "server", "--min-port", "20000", "--max-port", "29999",
             *self._bind_args()],
            os.path.join(workdir, "bore-server.log"),
            env=quiet,
        )
        self.procs = [s]
        self.pids = [s.pid]
        # bore local connects to the control port: wait until the server listens.
        deadline = time.time() + 10
        while port_is_free(BORE_CONTROL_PORT) and time.time() < deadline:
            time.sleep(0.05)
        fronts = {}
        for svc, backend in backends.services.items():
            _, lport = backend.rsplit(":", 1)
            logp = os.path.join(workdir, f"bore-local-{svc}.log")
            argv = [self.binary, "local", lport, "--local-host", "127.0.0.1", "--to", "127.0.0.1"]
            # 1. Learn the port the server assigns: bore prints "listening at HOST:PORT" (info).
            first = PROCS.start(
                f"bore-local-{svc}-probe", argv, logp,
                env=dict(os.environ, RUST_LOG="info"), stdout_pipe=True,
            )
            m = read_line_matching(first, r"listening at [^\s:]+:(\d+)", 15)
            port = m.group(1)
            PROCS.stop([first])
            # 2. Serve it quietly: the same client asking for that same port (the server frees
            #    it a moment after the first client left: retry while it says "in use").
            deadline = time.time() + 10
            while True:
                c = PROCS.start(f"bore-local-{svc}", [*argv, "--port", port], logp, env=quiet)
                time.sleep(0.3)
                if c.poll() is None or time.time() > deadline:
                    break
                PROCS.stop([c])
            self.procs.insert(0, c)
            self.pids.append(c.pid)
            fronts[svc] = f"127.0.0.1:{port}"
        self.set_fronts(fronts)
        self.ready(backends)

    def _bind_args(self):
        # --bind-addr exists in newer bore (0.5.1+); keep the server on loopback when it does.
        try:
            h = subprocess.run(
                [self.binary, "server", "--help"], capture_output=True, text=True, timeout=10
            ).stdout
        except Exception:  # noqa: BLE001
            return []
        return ["--bind-addr", "127.0.0.1"] if "--bind-addr" in h else []

"""What a benchmark connects to: PostgreSQL itself, pgbouncer, or cowproxy.

A `Target` is a loopback host:port plus, for a proxy, the pid of the one process whose
CPU time is charged to it (read from /proc, so the number includes every thread of that
process and nothing else). The proxies run as child processes of the harness, started
here and stopped by their pid; pgbouncer refuses to run as root, so when we are root it
runs as the unprivileged user the embedded PostgreSQL already runs as.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from cowproxy.embedded import SERVER_USER, EmbeddedPostgres, free_port, wait_for_port

REPO_ROOT = Path(__file__).resolve().parent.parent
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

Say = Callable[[str], None]
"""Where set-up steps are reported (the console), so the user sees what we do as root."""


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds consumed so far by process `pid` (all its threads).

    Fields 14 (utime) and 15 (stime) of /proc/PID/stat, in clock ticks. The command
    name (field 2) may contain spaces and parentheses, so fields are counted from the
    last ')'.
    """
    with open(f"/proc/{pid}/stat") as f:
        after_name = f.read().rpartition(")")[2].split()
    # after_name[0] is field 3 (state), so field N is after_name[N - 3].
    return (int(after_name[11]) + int(after_name[12])) / CLOCK_TICKS


@dataclass
class Target:
    """One thing pgbench can connect to."""

    name: str
    host: str
    port: int
    dbname: str = "postgres"
    user: str = "postgres"
    pid: int | None = None
    """The proxy process whose CPU is measured; None for PostgreSQL itself."""
    version: str = ""
    read_only: bool = False
    """Writes are refused by design (cowproxy's production route): write cells are n/a."""
    mode: str = ""

    def cpu_seconds(self) -> float | None:
        return process_cpu_seconds(self.pid) if self.pid else None

    def alive(self) -> bool:
        if self.pid is None:
            return True
        # A zombie (exited, not yet reaped by us) still has a /proc entry, in state Z.
        try:
            with open(f"/proc/{self.pid}/stat") as f:
                return f.read().rpartition(")")[2].split()[0] != "Z"
        except FileNotFoundError:
            return False


class TargetUnavailable(RuntimeError):
    """The target cannot be benchmarked here; the message says why (and it is skipped)."""


def direct_target(pg: EmbeddedPostgres) -> Target:
    return Target("direct", pg.host, pg.port, version=f"PostgreSQL {server_version(pg)}")  # type: ignore[arg-type]


def server_version(pg: EmbeddedPostgres) -> str:
    """"16.2" from "postgres (PostgreSQL) 16.2", "15.18" from "... 15.18 (Debian 15.18-0+deb12u1)"."""
    out = subprocess.run([str(pg.binary("postgres")), "--version"], capture_output=True, text=True, check=True)
    match = re.search(r"\(PostgreSQL\)\s+(\S+)", out.stdout)
    return match.group(1) if match else out.stdout.strip()


# ------------------------------------------------------------------------ child processes


class ChildProcess:
    """A server process started by the harness and stopped by its pid."""

    name = "child"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.workdir = Path(tempfile.mkdtemp(prefix=f"cowproxy-bench-{self.name}-"))
        self.stderr_path = self.workdir / "stderr.log"

    def _spawn(self, argv: list[str], port: int, **popen: object) -> None:
        with open(self.stderr_path, "wb") as stderr:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr, **popen)  # type: ignore[call-overload]
        try:
            wait_for_port("127.0.0.1", port, timeout=20)
        except OSError:
            log = self.log_tail()
            self.stop()
            raise TargetUnavailable(f"{self.name} did not start listening on port {port}:\n{log}") from None

    def log_tail(self, chars: int = 2000) -> str:
        texts = [p.read_text(errors="replace") for p in sorted(self.workdir.glob("*.log")) if p.exists()]
        return "\n".join(texts)[-chars:]

    def stop(self, timeout: float = 20) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)


class CowProxy(ChildProcess):
    """`cowproxy serve`, clients asking for the production database by name.

    `passthrough=True` (target `cowproxy`) adds `--passthrough`: the proxy core alone,
    on its native relay thread (proxy/pump.py); target `cowproxy-py` is the same with
    `COWPROXY_NATIVE_RELAY=0`, every chunk relayed by the Python relay (relay.py).
    relaying as the client's own user with no statement analysis, writes included:
    the same job pgbouncer does. `passthrough=False` (target `cowproxy-ro`) is the
    product's production route: read-only, every Query/Parse looked up in (or, on a
    miss, analysed into) the statement policy's cache before it is forwarded.
    """

    def __init__(self, pg: EmbeddedPostgres, passthrough: bool = True, dbname: str = "postgres",
                 python_relay: bool = False) -> None:
        self.name = ("cowproxy-py" if python_relay else "cowproxy") if passthrough else "cowproxy-ro"
        super().__init__()
        self.pg = pg
        self.passthrough = passthrough
        self.dbname = dbname
        self.python_relay = python_relay

    def start(self) -> Target:
        from cowproxy import __version__

        port = free_port()
        argv = [sys.executable, "-m", "cowproxy.cli", "serve", "--upstream", self.pg.dsn(self.dbname),
                "--listen", f"127.0.0.1:{port}"]
        if self.passthrough:
            argv.append("--passthrough")
        env = {**os.environ, "COWPROXY_NATIVE_RELAY": "0"} if self.python_relay else None
        self._spawn(argv, port, cwd=str(REPO_ROOT), env=env)
        assert self.proc is not None
        mode = "--passthrough" if self.passthrough else "production read-only"
        if self.passthrough:
            mode += ", Python relay (COWPROXY_NATIVE_RELAY=0)" if self.python_relay else ", native relay"
        return Target(self.name, "127.0.0.1", port, self.dbname, pid=self.proc.pid,
                      version=f"cowproxy {__version__}", read_only=not self.passthrough, mode=mode)


class PgBouncer(ChildProcess):
    """pgbouncer in session mode, trust auth, TCP on loopback only."""

    name = "pgbouncer"

    def __init__(self, binary: Path, pg: EmbeddedPostgres, dbname: str = "postgres") -> None:
        super().__init__()
        self.binary = binary
        self.pg = pg
        self.dbname = dbname

    def start(self) -> Target:
        port = free_port()
        ini = self.workdir / "pgbouncer.ini"
        (self.workdir / "userlist.txt").write_text(f'"{self.pg.superuser}" ""\n')
        ini.write_text(pgbouncer_ini(port, self.pg, self.dbname, self.workdir))
        popen: dict[str, object] = {"cwd": str(self.workdir)}
        if os.geteuid() == 0:
            user = unprivileged_user()
            for path in (self.workdir, *self.workdir.iterdir()):
                os.chown(path, user.pw_uid, user.pw_gid)
            popen.update(user=user.pw_uid, group=user.pw_gid, extra_groups=[])
        self._spawn([str(self.binary), str(ini)], port, **popen)
        assert self.proc is not None
        return Target("pgbouncer", "127.0.0.1", port, self.dbname, pid=self.proc.pid,
                      version=f"pgbouncer {pgbouncer_version(self.binary)}")


def pgbouncer_ini(port: int, pg: EmbeddedPostgres, dbname: str, workdir: Path) -> str:
    """A pgbouncer configuration comparable to cowproxy's: one client connection is one
    server connection for its whole life (session mode), no TLS, no Unix socket."""
    return f"""\
[databases]
{dbname} = host={pg.host} port={pg.port} dbname={dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = trust
auth_file = {workdir}/userlist.txt
pool_mode = session
max_client_conn = 200
default_pool_size = 50
max_db_connections = 0
ignore_startup_parameters = extra_float_digits
logfile = {workdir}/pgbouncer.log
log_connections = 0
log_disconnections = 0
stats_period = 60
"""


def unprivileged_user() -> pwd.struct_passwd:
    """The embedded PostgreSQL's server user (it exists once a cluster was started as
    root), else `nobody`."""
    for name in (SERVER_USER, "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise TargetUnavailable("no unprivileged user to run pgbouncer as (it refuses to run as root)")


def pgbouncer_version(binary: Path) -> str:
    out = subprocess.run([str(binary), "--version"], capture_output=True, text=True)
    match = re.search(r"PgBouncer\s+(\S+)", out.stdout + out.stderr, re.IGNORECASE)
    return match.group(1) if match else "?"


def find_pgbouncer() -> Path | None:
    found = shutil.which("pgbouncer") or next(
        (p for p in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer", "/usr/local/bin/pgbouncer") if os.access(p, os.X_OK)),
        None,
    )
    return Path(found) if found else None


def ensure_pgbouncer(explicit: Path | None, install: bool, say: Say) -> Path:
    """The pgbouncer binary: `explicit` if given, else the installed one, installed
    with apt-get first when missing and `install` allows it.

    Raises `TargetUnavailable` with the reason when there is none, so the caller can
    skip pgbouncer and still benchmark the other targets.
    """
    if explicit is not None:
        if not os.access(explicit, os.X_OK):
            raise TargetUnavailable(f"--pgbouncer {explicit} is not an executable file")
        return explicit
    found = find_pgbouncer()
    if found:
        return found
    if not install:
        raise TargetUnavailable("pgbouncer is not installed (and --no-install was given)")
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise TargetUnavailable("pgbouncer is not installed and we cannot apt-get install it (not root, or no apt-get)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for argv in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "pgbouncer"]):
        say(f"pgbouncer is missing: running `{' '.join(argv)}`")
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
        except subprocess.TimeoutExpired:
            raise TargetUnavailable(f"`{' '.join(argv)}` took longer than 600 s") from None
        if proc.returncode != 0:
            raise TargetUnavailable(f"`{' '.join(argv)}` failed ({proc.returncode}): {(proc.stderr or proc.stdout)[-500:]}")
    found = find_pgbouncer()
    if not found:
        raise TargetUnavailable("apt-get installed pgbouncer but no pgbouncer binary was found")
    return found

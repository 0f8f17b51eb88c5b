"""A console account for tests, and the system's Chromium driven by Playwright."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests

from shared.passwords import hash_password

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
OPERATOR = "ops"
PASSWORD = "a console password for tests"
SECRET_KEY = "test-console-session-key-0123456789abcdef"


def console_env(**overrides: str) -> dict[str, str]:
    """The console's variables: one account (OPERATOR / PASSWORD) and a session key."""
    return {"CONSOLE_USERS": f"{OPERATOR}:{hash_password(PASSWORD)}", "CONSOLE_SECRET_KEY": SECRET_KEY, **overrides}


@contextmanager
def browser_page(*, width: int = 1280, height: int = 900) -> Iterator[Any]:
    """A fresh headless Chromium page (scripts enabled, so that a script that ran would show)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            context = browser.new_context(viewport={"width": width, "height": height})
            yield context.new_page()
        finally:
            browser.close()


def hidden_input(html: str, name: str) -> str:
    """The value of a form's hidden input."""
    match = re.search(rf'name="{name}" value="([^"]+)"', html)
    assert match, html
    return match.group(1)


def csrf_token(html: str) -> str:
    return hidden_input(html, "csrf_token")


def log_in(http: requests.Session, url: str, password: str, **headers: str) -> requests.Response:
    token = csrf_token(http.get(f"{url}/login", timeout=10).text)
    form = {"csrf_token": token, "username": OPERATOR, "password": password, "next": "/"}
    return http.post(f"{url}/login", data=form, timeout=30, allow_redirects=False, headers=headers)

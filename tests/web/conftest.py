"""Fixtures of the browser tests: a real `python -m nodegraph serve` with the tiny checkpoint, and headless Chromium.

The browser is Debian's chromium driven by the `playwright` package (never a downloaded browser). Without it the
browser tests skip locally with the reason; under CI (CI=true) they fail instead, so they cannot vanish from CI.
"""

import importlib.util
import os
import re
from pathlib import Path

import pytest

from engine_fixtures import folders_env
from live_server import ServerProcess
from nodegraph.nodes import Environment

CHROMIUM = Path(os.environ.get("NODEGRAPH_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
WINDOW = {"width": 1280, "height": 800}  # a laptop-sized window


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (pip install -e '.[test]')"
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    return None


# Module scope: playwright's sync API keeps an asyncio loop running in this thread while it is open, and the tests
# that use asyncio.run (the aiohttp test client) cannot run beside it.
@pytest.fixture(scope="module")
def browser():
    problem = browser_missing()
    if problem and in_ci():
        pytest.fail(f"browser tests cannot run: {problem}; under CI they must not be skipped")
    if problem:
        pytest.skip(f"browser tests skipped: {problem}")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM))
        yield browser
        browser.close()


@pytest.fixture(scope="session")
def editor_env(tmp_path_factory, tiny_checkpoint) -> Environment:
    return folders_env(tmp_path_factory.mktemp("editor"), tiny_checkpoint)


@pytest.fixture(scope="session")
def server(editor_env, tmp_path_factory):
    process = ServerProcess(editor_env, tmp_path_factory.mktemp("editor-data"))
    process.start()
    yield process
    process.stop()


class ConsoleErrors(list):
    """Errors the page logged; a test that provokes some on purpose names them in `expected`."""

    def __init__(self):
        super().__init__()
        self.expected: list[str] = []

    def unexpected(self) -> list[str]:
        return [text for text in self if not any(re.search(pattern, text) for pattern in self.expected)]


@pytest.fixture
def page(browser, server):
    """The editor in a fresh browser context (no saved graph); fails the test if the console shows an error."""
    context = browser.new_context(viewport=WINDOW, accept_downloads=True)
    page = context.new_page()
    errors = ConsoleErrors()
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(f"uncaught: {error}"))
    page.console_errors = errors
    page.goto(server.base + "/")
    page.wait_for_selector("body[data-ready=true]", timeout=15_000)
    yield page
    context.close()
    assert errors.unexpected() == [], "errors in the browser console"


@pytest.fixture(scope="session")
def screenshots() -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    return SCREENSHOTS

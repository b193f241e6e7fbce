"""The search page (/ of the HTTP port) in a real browser: Debian's headless chromium driven by Playwright. A
UKBench photo dropped on the page finds its object's other views first; the models page lists the served model;
with tokens on, the page asks for one and works once it is given. Screenshots go to build/screenshots/."""

from __future__ import annotations

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from offshelf.clients import Client

from common import ROOT, serving, shared_photos

MODEL = "efficientnet-lite0"
SCREENSHOTS = ROOT / "build" / "screenshots"


@pytest.fixture(scope="module")
def server(model_repo, tmp_path_factory):
    """A server whose collection holds the first five UKBench objects' views but the query's (ukbench00000)."""
    with serving(model_repo, tmp_path_factory.mktemp("page") / "data", http_port=0, drain_seconds=0) as running:
        with Client(running.address, timeout=120) as client:
            client.create_collection("ukbench-page", MODEL, thumbnail_size=128)
            photos = shared_photos("ukbench", 20)[1:]
            client.add("ukbench-page", photos, ids=[p.stem for p in photos])
        yield running


@pytest.fixture(scope="module")
def browser(chromium):
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser):
    opened = browser.new_page()
    yield opened
    opened.close()


def test_a_dropped_photo_finds_its_objects_other_views_first(server, page: Page):
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.goto(server.http_url + "/")
    expect(page.locator("#collection")).to_contain_text("ukbench-page (19 items)")
    query = shared_photos("ukbench", 1)[0]
    page.set_input_files("#photo", str(query))
    page.fill("#k", "3")
    page.click("button[type=submit]")
    hits = page.locator("#hits li")
    expect(hits).to_have_count(3)
    shown = {hits.nth(i).get_attribute("data-id") for i in range(3)}
    assert shown == {"ukbench00001", "ukbench00002", "ukbench00003"}  # the query's object's other views
    pictures = page.locator("#hits li img")
    expect(pictures).to_have_count(3)  # the hits as pictures: the collection keeps thumbnails
    assert page.evaluate("[...document.querySelectorAll('#hits img')].every(i => i.naturalWidth === 128)")
    expect(page.locator("#query-figure")).to_be_visible()
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / "search-page.png"), full_page=True)

    page.fill("#label", "no-such-label")  # a label filter that selects nothing
    page.click("button[type=submit]")
    expect(page.locator("#status")).to_have_text("no hits")
    assert errors == []


def test_the_models_page_lists_outputs_versions_and_provider(server, page: Page):
    page.goto(server.http_url + "/#models")
    row = page.locator("#models tbody tr")
    expect(row).to_have_count(1)
    expect(row).to_contain_text(MODEL)
    expect(row).to_contain_text("CPUExecutionProvider")
    expect(row).to_contain_text("embedding (1280, avg)")
    page.screenshot(path=str(SCREENSHOTS / "models-page.png"), full_page=True)


def test_with_tokens_on_the_page_asks_for_one_and_keeps_it_in_the_tab(tiny_repo, tmp_path, page: Page):
    from test_auth import tokens_file

    tokens = tokens_file(tmp_path / "tokens", {"read": "page-read-token"})
    with serving(tiny_repo, tmp_path / "data", http_port=0, drain_seconds=0, tokens_file=tokens) as secured:
        page.goto(secured.http_url + "/#models")
        expect(page.locator("#status")).to_contain_text("401")
        expect(page.locator("#token")).to_be_focused()
        page.fill("#token", "page-read-token")
        page.dispatch_event("#token", "change")
        expect(page.locator("#models tbody tr")).to_have_count(1)
        assert page.evaluate("sessionStorage.getItem('offshelf-token')") == "page-read-token"

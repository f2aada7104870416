"""The app in a real browser: `streamlit run workbench/app.py` on a tiny trained run, driven by Selenium.

One server (module scope) on the run of the `workbench_env` fixture, with its own empty gold-set folder, and one
headless Chromium. Each of the first tests clicks through one page's main interactions and checks the DOM after
each click (the statistics test exports the run's statistics with the page's own button first). The last ones
open every page at its own address, at 1400 and at 1100 px, screenshot it and look for exceptions and for text
the page cuts off (workbench.browser.truncated_elements).

Needs Chromium and its chromedriver (`make chromium` installs both from Debian when run as root). Without them
the tests are skipped with the reason, except under CI (CI=true), where a missing browser is a failure. The
screenshots go to a temporary folder, or to $WORKBENCH_E2E_SCREENSHOTS when set (e.g. kept as CI artefacts).
"""
from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from urllib.parse import quote

import pytest
from PIL import Image

from workbench import screenshots
from workbench.browser import Browser, Server, chromium_missing, truncated_elements
from workbench.pages import BY_URL, PAGES, page_url

# One server and one browser for the whole module: under pytest-xdist (`make test` runs --dist loadgroup) all its
# tests go to the same worker.
pytestmark = pytest.mark.xdist_group("browser")

HEADING = re.compile(r"Layer (\d+), head (\d+)")
ROWS = re.compile(r"(\d+) of (\d+) rows")
WIDTHS = (1100, 1400)

# JavaScript reads that never fail on a half-drawn page: '' when the element is not there (yet).
CHART_TITLE = ("const t = document.querySelector(`.st-key-${arguments[0]} .gtitle`); "
               "return t ? t.textContent.trim() : '';")
MAIN_TEXT = "const m = document.querySelector('[data-testid=\"stMain\"]'); return m ? m.innerText : '';"
TITLES = "return [...document.querySelectorAll('[data-testid=\"stMain\"] h1')].map(e => e.textContent.trim());"
NOT_FOUND = ("return [...document.querySelectorAll('[data-testid=\"stDialog\"], [role=\"dialog\"]')]"
             ".map(e => e.innerText).filter(t => t.includes('Page not found'));")
CAPTIONS = ("return [...document.querySelectorAll('[data-testid=\"stCaptionContainer\"]')]"
            ".map(e => e.innerText).join('\\n');")


@pytest.fixture(scope="module")
def chromium():
    missing = chromium_missing()
    if missing:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{missing}; under CI the browser test must run")
        pytest.skip(missing)


@pytest.fixture(scope="module")
def app(chromium, workbench_env, tmp_path_factory):
    """(server, its WORKBENCH_* settings) of the app on the tiny run, with a gold-set folder of its own and the
    behaviour analyses of the tiny run written (so those pages draw their charts)."""
    root = tmp_path_factory.mktemp("browser")
    env = {**workbench_env, "WORKBENCH_GOLD_DIR": str(root / "gold"),
           "WORKBENCH_BEHAVIOUR_ROOT": str(root / "behaviour")}
    write_behaviour(workbench_env, root / "behaviour" / Path(workbench_env["WORKBENCH_RUN"]).name)
    with Server(env, log=root / "server.log") as server:
        yield server, env


@pytest.fixture(scope="module")
def browser(app, tmp_path_factory):
    with Browser(1400, 1000, downloads=tmp_path_factory.mktemp("downloads")) as b:
        yield b


def write_behaviour(env: dict[str, str], folder: Path) -> None:
    from analyses import dynamics, grounding, head_importance, relevance
    run, classifier = Path(env["WORKBENCH_RUN"]), Path(env["WORKBENCH_CLASSIFIER"])
    head_importance.head_importance(out=folder / "importance", run=run, queries=3, candidates=2, random_orders=1,
                                    classifier=classifier, progress=False)
    grounding.grounding(out=folder / "grounding", run=run, classifier=classifier, progress=False)
    relevance.relevance(out=folder / "relevance", run=run, max_examples=3, progress=False)
    dynamics.dynamics(out=folder / "dynamics", run=run, queries=3, candidates=2, grounding_examples=3,
                      classifier=classifier, progress=False)


def open_page(browser: Browser, server: Server, page: str) -> dict[str, str]:
    dom = browser.open(page_url(server.url, page), BY_URL[page].title)
    assert_no_error(dom, page)
    return dom


def assert_no_error(dom: dict[str, str], where: str) -> None:
    assert 'data-testid="stException"' not in dom["html"] and "Traceback" not in dom["text"], \
        f"{where}: the page shows an exception: {dom['text'][:800]!r}"


def changes(browser: Browser, action, read, what: str, timeout: float = 60):
    """Do `action`, wait until read() gives a new (non-empty) value and the app is idle again; the new value."""
    before = read()
    action()
    browser.wait_until(lambda: read() not in (before, "", None), timeout, what)
    assert_no_error(browser.wait_ready(), what)
    return read()


def chart_title(browser: Browser, key: str) -> str:
    return browser.script(CHART_TITLE, key)


def heading(browser: Browser) -> tuple[int, int]:
    match = HEADING.search(chart_title(browser, "head_heatmap"))
    assert match, chart_title(browser, "head_heatmap")
    return int(match[1]), int(match[2])


def other(options: list[str], current: str) -> str:
    """An option that is not the chosen one."""
    return next(o for o in options if o != current)


def rows_caption(browser: Browser) -> str:
    match = ROWS.search(browser.script(CAPTIONS) or "")
    return match[0] if match else ""


def label_rows(gold: Path) -> int:
    path = gold / "labels.csv"
    if not path.exists():
        return 0
    with open(path, newline="", encoding="utf-8") as f:
        return max(0, sum(1 for _ in csv.reader(f)) - 1)


# ------------------------------------------------------------------------------------------------ head explorer
def test_head_explorer_steps_through_heads_and_layers(app, browser):
    server, _ = app
    open_page(browser, server, "head_explorer")
    layer, head = heading(browser)
    read = lambda: chart_title(browser, "head_heatmap")  # noqa: E731
    changes(browser, lambda: browser.click("head_next"), read, "the next head")
    assert heading(browser)[0] == layer and heading(browser)[1] != head
    assert browser.selected("head") == str(heading(browser)[1])
    changes(browser, lambda: browser.click("head_prev"), read, "the previous head")
    assert heading(browser) == (layer, head)
    changes(browser, lambda: browser.click("layer_next"), read, "the next layer")
    assert heading(browser)[0] != layer and heading(browser)[1] == head
    assert browser.selected("layer") == str(heading(browser)[0])
    changes(browser, lambda: browser.click("layer_prev"), read, "the previous layer")
    assert heading(browser) == (layer, head)


def test_sidebar_example_and_split_change_the_page(app, browser):
    server, _ = app
    open_page(browser, server, "head_explorer")
    read = lambda: browser.script(MAIN_TEXT)  # noqa: E731
    example = browser.selected("example")
    changes(browser, lambda: browser.choose("example", other(browser.options("example"), example)), read,
            "the page of another example")
    assert browser.selected("example") != example
    split = browser.selected("split")
    changes(browser, lambda: browser.choose("split", other(browser.options("split"), split)), read,
            "the page of another split")
    assert browser.selected("split") != split
    changes(browser, lambda: browser.choose("split", split), read, "the page of the first split")
    assert browser.selected("split") == split


# ------------------------------------------------------------------------------------------------ image view, OT
def test_image_view_word_picker_changes_the_chart(app, browser):
    server, _ = app
    open_page(browser, server, "image_view")
    word = browser.selected("word")
    title = chart_title(browser, "image_word")
    new = changes(browser, lambda: browser.choose("word", other(browser.options("word"), word)),
                  lambda: chart_title(browser, "image_word"), "the chart of another word")
    assert new != title and browser.selected("word") != word


def test_transport_solver_changes_the_plan(app, browser):
    server, _ = app
    open_page(browser, server, "transport")
    title = chart_title(browser, "ot_plan")
    solvers = browser.radio_labels("ot_solver")
    current = max((s for s in solvers if title.startswith(f"{s} plan")), key=len)
    for solver in [s for s in solvers if s != current] + [current]:
        new = changes(browser, lambda: browser.radio("ot_solver", solver), lambda: chart_title(browser, "ot_plan"),
                      f"the {solver} plan")
        assert new.startswith(f"{solver} plan"), (solver, new)


def test_behaviour_pages_follow_their_pickers(app, browser):
    server, _ = app
    open_page(browser, server, "importance")
    new = changes(browser, lambda: browser.radio("imp_metric", "MLM loss"), lambda: chart_title(browser, "imp_grid"),
                  "the importance grid of the MLM loss")
    assert "MLM loss" in new
    open_page(browser, server, "grounding")
    new = changes(browser, lambda: browser.radio("gr_view", "attention to the other modality"),
                  lambda: chart_title(browser, "gr_grid"), "the cross-modal grid")
    assert new.startswith("attention to the other modality")
    open_page(browser, server, "relevance")
    new = changes(browser, lambda: browser.radio("rel_method", "attention rollout"),
                  lambda: chart_title(browser, "rel_image"), "the rollout relevance")
    assert "attention rollout" in new


# ------------------------------------------------------------------------------------------------ statistics
def test_statistics_export_filter_and_download(app, browser):
    server, env = app
    open_page(browser, server, "statistics")
    if not rows_caption(browser):  # nothing exported for the tiny run yet: the page's own button does it
        browser.click("export_now")
        browser.wait_until(lambda: rows_caption(browser), 240, "the exported table")
        assert_no_error(browser.wait_ready(), "the exported statistics")
    caption = rows_caption(browser)
    shown, total = map(int, ROWS.search(caption).groups())
    assert shown == total > 0
    layers = [o for o in browser.options("stats_layers_heads") if o.isdigit()]  # not "Select all"
    browser.close_menus()
    browser.choose("stats_layers_heads", layers[0])
    browser.wait_until(lambda: rows_caption(browser) not in (caption, ""), 60, "the filtered table")
    browser.close_menus()
    assert_no_error(browser.wait_ready(), "the filtered table")
    shown, total = map(int, ROWS.search(rows_caption(browser)).groups())
    assert 0 < shown < total and len(layers) > 1

    exported = Path(env["WORKBENCH_STATS_ROOT"]) / Path(env["WORKBENCH_RUN"]).name / "heads.csv"
    with open(exported, newline="", encoding="utf-8") as f:
        header = next(csv.reader(f))
    for old in browser.downloads.glob("heads*.csv"):
        old.unlink()
    browser.click("dl_csv")
    with open(browser.wait_download("heads.csv"), newline="", encoding="utf-8") as f:
        downloaded = list(csv.reader(f))
    assert downloaded[0] == header and len(downloaded) - 1 == shown  # the filtered view, as the page shows it


# ------------------------------------------------------------------------------------------------ label heads
def test_label_button_saves_a_row_and_undo_removes_it(app, browser):
    server, env = app
    gold = Path(env["WORKBENCH_GOLD_DIR"])
    open_page(browser, server, "label_heads")
    before = label_rows(gold)
    browser.click("label_vertical")
    browser.wait_until(lambda: label_rows(gold) == before + 1, 60, "a new row in labels.csv")
    assert_no_error(browser.wait_ready(), "after labelling")
    with open(gold / "labels.csv", newline="", encoding="utf-8") as f:
        assert list(csv.DictReader(f))[-1]["label"] == "vertical"
    assert browser.driver.find_elements("css selector", ".st-key-label_undo button"), \
        "the Label heads page has no undo button (key label_undo)"
    browser.click("label_undo")
    browser.wait_until(lambda: label_rows(gold) == before, 60, "the label row removed by undo")
    assert_no_error(browser.wait_ready(), "after undo")


# ------------------------------------------------------------------------------------------------ every page
CUT_PAGE = """<!doctype html><body style="font: 16px sans-serif">
<div style="width: 100px; overflow: hidden; white-space: nowrap; text-overflow: ellipsis">far too long for 100 px</div>
<div style="width: 400px; overflow: hidden; white-space: nowrap">fits</div>
<div class="js-plotly-plot" style="width: 200px; height: 100px"><svg class="main-svg" width="200" height="100">
<text class="gtitle" x="120" y="20">a title wider than its chart</text>
<g class="xtick"><text x="10" y="90">ok</text></g>
</svg></div></body>"""


def test_truncated_elements_finds_cut_text(browser):
    browser.get("data:text/html;charset=utf-8," + quote(CUT_PAGE))
    cut = truncated_elements(browser.driver)
    assert len(cut) == 2, cut
    assert '"far too long for 100 px" cut off' in cut[0] and 'chart title "a title wider than its chart"' in cut[1]


@pytest.fixture(scope="module")
def visits(app, browser, tmp_path_factory):
    """visits(width) -> {url path: what the page showed} for every page of the app opened at its own address in
    a window `width` px wide, each screenshot into the screenshot folder; each width is visited once."""
    server, _ = app
    out = Path(os.environ.get("WORKBENCH_E2E_SCREENSHOTS") or tmp_path_factory.mktemp("screenshots"))
    out.mkdir(parents=True, exist_ok=True)
    done = {}

    def visit(page: dict, width: int) -> dict:
        # the screenshot command's own steps: open the page at its address, wait for it, write <url>-<width>.png
        dom = screenshots.shoot(browser, server.url, out, [page.url], suffix=f"-{width}")[page.url]
        shot = out / f"{page.url}-{width}.png"
        return {"dom": dom, "titles": browser.script(TITLES), "not_found": browser.script(NOT_FOUND),
                "url": browser.driver.current_url, "cut": truncated_elements(browser.driver), "shot": shot}

    def pages(width: int) -> dict[str, dict]:
        if width not in done:
            browser.resize(width, 1000)
            try:
                done[width] = {page.url: visit(page, width) for page in PAGES}
            finally:
                browser.resize(1400, 1000)
        return done[width]
    return pages


def test_every_page_opens_at_its_own_address(app, visits):
    server, _ = app
    shown = visits(1400)
    for page in PAGES:
        seen, address = shown[page.url], page.address
        assert_no_error(seen["dom"], address)
        assert not seen["not_found"], f"{address} opens a 'Page not found' dialog"
        assert page.title in seen["titles"], \
            f"{address} shows the title(s) {seen['titles']}, not {page.title!r}"
        assert seen["url"].rstrip("/") == (server.url + address).rstrip("/"), (address, seen["url"])


@pytest.mark.parametrize("width", WIDTHS)
def test_every_page_screenshot_without_errors_or_cut_text(visits, width):
    shown = visits(width)
    for url, seen in shown.items():
        assert_no_error(seen["dom"], f"{url} at {width} px")
        with Image.open(seen["shot"]) as image:
            assert image.size[0] >= 500 and len(image.getcolors(256) or []) > 8, url  # not a blank page
    cut = [f"{url}: {line}" for url, seen in shown.items() for line in seen["cut"]]
    assert not cut, f"cut-off text at {width} px:\n" + "\n".join(cut)

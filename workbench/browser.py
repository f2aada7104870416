"""Driving the app in a real browser: a local Streamlit server (`Server`), headless Chromium under Selenium
(`Browser`, with waits and widget access by key), and `truncated_elements`, the text a page cuts off.

The browser is the system's Chromium with its matching chromedriver (Debian: `apt-get install -y chromium
chromium-driver`); both are found on the PATH, or named by $CHROMIUM and $CHROMEDRIVER. Selenium is always handed
the driver's path, so it never runs Selenium Manager (which would try to download one). Used by the screenshots
command, the browser test (tests/test_workbench_browser.py) and the latency benchmark (workbench.bench_browser).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from uniter_core.errors import EnvironmentFailure
from workbench.pages import APP, REPO

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
DRIVERS = ("chromedriver", "/usr/lib/chromium/chromedriver", "/usr/lib/chromium-browser/chromedriver")
INSTALL_HINT = "as root: `make chromium`, or `apt-get install -y chromium chromium-driver`"


def _first_program(names) -> str | None:
    for name in names:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def find_browser() -> str | None:
    """The Chromium binary: $CHROMIUM, else the first of BROWSERS on the PATH."""
    return _first_program((os.environ.get("CHROMIUM", ""), *BROWSERS))


def find_driver() -> str | None:
    """chromedriver: $CHROMEDRIVER, else `chromedriver` on the PATH, else where Debian's chromium-driver puts it."""
    return _first_program((os.environ.get("CHROMEDRIVER", ""), *DRIVERS))


def find_chromium() -> tuple[str, str] | None:
    """(browser, driver) paths, or None when either is missing (chromium_missing says which)."""
    browser, driver = find_browser(), find_driver()
    return (browser, driver) if browser and driver else None


def chromium_missing() -> str | None:
    """What is missing to drive the browser, in one sentence; None when Chromium and its driver are both there."""
    missing = [what for what, path in (("chromium", find_browser()), ("chromedriver", find_driver())) if not path]
    return f"{' and '.join(missing)} not installed ({INSTALL_HINT})" if missing else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`streamlit run workbench/app.py` on a free local port, stopped (by its own pid) on exit."""

    def __init__(self, env: dict[str, str] | None = None, port: int | None = None, log: Path | None = None):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
        self.log = log

    def __enter__(self) -> "Server":
        out = open(self.log, "w") if self.log else subprocess.DEVNULL
        self.process = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(self.port), "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"],
            cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise EnvironmentFailure(f"streamlit exited with {self.process.returncode} (log: {self.log})")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1) as r:
                    if r.read().strip() == b"ok":
                        return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise EnvironmentFailure(f"streamlit did not answer on {self.url} within 60 s (log: {self.log})")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


# What the page shows right now, in one round trip. `running`: the status widget (the running man in the toolbar)
# is shown, not fading out (it carries the StatusWidget-exit classes for 200 ms after the script finished), or the
# app's own script state (stApp's data-test-script-state) is not "notRunning" (it is "initial" before the first
# run). `signature` changes whenever the DOM does (node count, text, the plotly layers and their sizes).
PROBE = """
const all = s => document.querySelectorAll(s);
const body = document.body ? document.body.innerText : '';
const main = document.querySelector('[data-testid="stMain"]');
const charts = [...all('.js-plotly-plot')];
const app = document.querySelector('[data-testid="stApp"]');
const script = app ? app.getAttribute('data-test-script-state') || 'notRunning' : 'initial';
return {
  text: body,
  main: main ? main.innerText : '',
  drawn: main ? main.querySelectorAll('[data-testid="stElementContainer"]').length : 0,
  running: [...all('[data-testid="stStatusWidget"]')].some(e => !e.className.includes('StatusWidget-exit'))
      || !['notRunning', 'compilationError'].includes(script),
  skeletons: all('[data-testid="stSkeleton"], [data-testid="stSkeletonElement"]').length,
  stale: all('[data-stale="true"]').length,
  alerts: all('[data-testid="stAlert"], [data-testid="stException"]').length,
  loaded: !!app && document.readyState === 'complete',
  signature: [document.getElementsByTagName('*').length, body.length,
              charts.map(c => c.querySelectorAll('.main-svg').length + ':' + c.querySelectorAll('path, text').length
                              + ':' + Math.round(c.getBoundingClientRect().width)).join(',')].join('|'),
};
"""


class Browser:
    """Headless Chromium under Selenium (Debian's chromedriver), one window of width x height CSS pixels.

    Files the page downloads land in `downloads` (a temporary folder, removed on exit, when not given).
    `driver` is the selenium WebDriver, for the find_element calls of a test."""

    def __init__(self, width: int = 1400, height: int = 1000, binary: str | None = None,
                 driver_path: str | None = None, downloads: Path | None = None):
        self.size = (width, height)
        self.binary = binary or find_browser()
        self.driver_path = driver_path or find_driver()
        if not (self.binary and self.driver_path):
            raise EnvironmentFailure(chromium_missing() or "chromium or chromedriver not found")
        self.downloads = Path(downloads) if downloads else None

    def __enter__(self) -> "Browser":
        os.environ.setdefault("SE_OFFLINE", "true")  # belt and braces: Selenium Manager must never download
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="wb-chromium-")
        self._own_downloads = self.downloads is None
        if self.downloads is None:
            self.downloads = Path(tempfile.mkdtemp(prefix="wb-downloads-"))
        self.downloads.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = self.binary
        for flag in ("--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--mute-audio",
                     "--disable-dev-shm-usage", "--disable-extensions", "--disable-background-networking",
                     "--disable-component-update", "--disable-default-apps", "--disable-sync",
                     "--force-color-profile=srgb", f"--user-data-dir={self.profile}",
                     f"--window-size={self.size[0]},{self.size[1]}"):
            options.add_argument(flag)
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            options.add_argument("--no-sandbox")  # Chromium refuses to run as root inside its sandbox
        options.add_experimental_option("prefs", {
            "download.default_directory": str(self.downloads), "download.prompt_for_download": False,
            "download.directory_upgrade": True, "safebrowsing.enabled": False})
        service = Service(executable_path=self.driver_path, log_output=subprocess.DEVNULL)
        try:
            self.driver = webdriver.Chrome(service=service, options=options)
        except Exception as error:  # e.g. a chromedriver of another version than the browser
            self._remove_folders()
            first = (getattr(error, "msg", None) or str(error)).strip().splitlines()
            raise EnvironmentFailure(f"{self.binary} could not be started through {self.driver_path}: "
                                     f"{first[0] if first else type(error).__name__}") from None
        self.driver.execute_cdp_cmd("Browser.setDownloadBehavior",
                                    {"behavior": "allow", "downloadPath": str(self.downloads)})
        self.resize(*self.size)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.driver.quit()
        finally:
            self._remove_folders()

    def _remove_folders(self) -> None:
        shutil.rmtree(self.profile, ignore_errors=True)
        if self._own_downloads:
            shutil.rmtree(self.downloads, ignore_errors=True)

    # ------------------------------------------------------------------------------------- basics
    def resize(self, width: int, height: int) -> None:
        """The viewport (what the page sees as window.innerWidth/innerHeight) becomes width x height."""
        self.size = (width, height)
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})

    def script(self, source: str, *args):
        """Run JavaScript (a function body: `return ...`) in the page."""
        return self.driver.execute_script(source, *args)

    def get(self, url: str) -> None:
        self.driver.get(url)

    def probe(self) -> dict:
        return self.script(PROBE)

    def dom(self) -> dict[str, str]:
        return {"html": self.driver.page_source, "text": self.script("return document.body.innerText")}

    def screenshot(self) -> bytes:
        return self.driver.get_screenshot_as_png()

    # ------------------------------------------------------------------------------------- waiting
    def wait_until(self, condition, timeout: float = 60, what: str = "the condition", poll: float = 0.1):
        """condition() (a callable, or a JavaScript function body) polled until truthy; returns its value."""
        check = condition if callable(condition) else (lambda: self.script(condition))
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                text = self.script("return document.body ? document.body.innerText : ''") or ""
                raise TimeoutError(f"{what} not reached within {timeout:.0f} s; the page shows: {text[:600]!r}")
            time.sleep(poll)

    def wait_ready(self, marker: str | None = None, timeout: float = 90, settle: float = 0.4) -> dict[str, str]:
        """Wait until the page has drawn something, the Streamlit script has stopped running (no status widget,
        and the app's script state says so), no skeleton or stale element is left, `marker` (when given) shows
        in the main area or a message box does, and the DOM and plotly charts have stayed unchanged for `settle`
        seconds; returns the page's DOM as {"html": markup, "text": rendered text}."""
        deadline, since, last, state = time.monotonic() + timeout, None, None, {}
        while time.monotonic() < deadline:
            state = self.probe() or {}
            ready = (state.get("loaded") and state.get("drawn") and not state.get("running")
                     and not state.get("skeletons") and not state.get("stale")
                     and (marker is None or marker in state.get("main", "") or state.get("alerts", 0) > 0))
            now = time.monotonic()
            if not ready:
                since = None
            elif since is None or state.get("signature") != last:
                since = now
            elif now - since >= settle:
                return self.dom()
            last = state.get("signature")
            time.sleep(0.1)
        shown = (state.get("text") or "")[:600]
        raise TimeoutError(f"{self.driver.current_url}: {marker!r} did not appear, or the app kept running, within "
                           f"{timeout:.0f} s; the page shows: {shown!r}")

    def open(self, url: str, marker: str | None = None, timeout: float = 90) -> dict[str, str]:
        """Load url and wait_ready(marker); returns the page's DOM."""
        self.get(url)
        return self.wait_ready(marker, timeout)

    def wait_download(self, name: str, timeout: float = 30) -> Path:
        """The file `name` in the download folder, once Chromium has finished writing it."""
        path = self.downloads / name
        self.wait_until(lambda: path.is_file() and not any(self.downloads.glob("*.crdownload")), timeout,
                        f"the download {name}")
        return path

    # ------------------------------------------------------------------------------------- widgets by key
    def keyed(self, key: str, css: str = ""):
        """The element of the widget with this key (its container has the class st-key-<key>), or one inside it."""
        from selenium.webdriver.common.by import By

        return self.driver.find_element(By.CSS_SELECTOR, f".st-key-{key} {css}".strip())

    def click(self, key: str) -> None:
        """Click the button (or download button) with this key."""
        self.keyed(key, "button").click()

    def options(self, key: str) -> list[str]:
        """Open the select box (or multiselect) with this key and return the texts of its options; it stays open."""
        self.keyed(key, 'input[role="combobox"]').click()
        return [e.text for e in self.wait_until(self.open_options, 10, f"the options of {key!r}")]

    def open_options(self) -> list:
        """The option elements of the open option list (none when no list is open)."""
        from selenium.webdriver.common.by import By

        return self.driver.find_elements(By.CSS_SELECTOR, '[role="listbox"] [role="option"]')

    def choose(self, key: str, option: str | int):
        """Pick an option of the select box (or multiselect) with this key, by its text or its position in the
        list; returns the option's text (a select box closes its list, a multiselect keeps it open)."""
        texts = self.options(key)
        index = option if isinstance(option, int) else texts.index(option)
        self.open_options()[index].click()
        return texts[index]

    def close_menus(self) -> None:
        """Close an open option list (Escape)."""
        from selenium.webdriver.common.keys import Keys

        self.driver.switch_to.active_element.send_keys(Keys.ESCAPE)

    def selected(self, key: str) -> str:
        """The text the select box with this key shows (its chosen option)."""
        return self.keyed(key, 'input[role="combobox"]').get_attribute("value") or ""

    def radio(self, key: str, label: str) -> None:
        """Click the option of the radio group with this key whose label is `label`."""
        from selenium.webdriver.common.by import By

        labels = self.keyed(key).find_elements(By.CSS_SELECTOR, '[data-testid="stRadioOption"], label')
        match = [e for e in labels if e.text.strip() == label]
        if not match:
            raise LookupError(f"radio {key!r} has no option {label!r} (has {[e.text for e in labels]})")
        match[0].click()

    def radio_labels(self, key: str) -> list[str]:
        from selenium.webdriver.common.by import By

        return [e.text.strip() for e in self.keyed(key).find_elements(By.CSS_SELECTOR, '[data-testid="stRadioOption"]')]


# Text that the page cuts off, found in the live DOM; one description per cut-off text, for truncated_elements.
# - HTML boxes that clip (overflow hidden/clip, or text-overflow: ellipsis) and whose content is wider
#   (scrollWidth > clientWidth): metric labels and values, the option shown in a select box (an input), button
#   labels, captions...; only the innermost of nested clipping boxes is reported. Text boxes are left out: they
#   hold what the user typed, which scrolls.
# - Plotly text (titles, axis titles, tick labels, legend, colour bar, annotations) reaching outside its figure.
# - Charts and images wider than the column that holds them.
# - Dataframe headers (drawn on a canvas): the header text measured in the grid's header font against the width
#   of its column, read from the grid component's properties.
CUT_TEXT = r"""
const out = [];
const short = t => (t || '').replace(/\s+/g, ' ').trim().slice(0, 70);
const GENERIC = new Set(['stMarkdownContainer', 'stMarkdown', 'stElementContainer', 'stVerticalBlock',
  'stHorizontalBlock', 'stColumn', 'stLayoutWrapper', 'stTooltipHoverTarget', 'stWidgetLabel', 'stFullScreenFrame',
  'stMainBlockContainer', 'stSidebarUserContent', 'stSidebarContent']);
const where = e => {
  const keyed = e.closest('[class*="st-key-"]');
  const key = keyed ? [...keyed.classList].find(c => c.startsWith('st-key-')) : null;
  let tid = e.closest('[data-testid]');
  while (tid && GENERIC.has(tid.dataset.testid)) tid = tid.parentElement.closest('[data-testid]');
  const side = e.closest('[data-testid="stSidebar"]') ? 'sidebar ' : '';
  return side + ([tid && tid.dataset.testid, key && `key ${key.slice(7)}`].filter(Boolean).join(', ') || e.tagName);
};
const visible = r => r.width > 2 && r.height > 2;
// Text boxes hold what the user typed and scroll it; the grid and the charts are checked below. The sidebar's
// Example select box shows the start of a caption and the whole caption right under it (workbench.ui).
const skip = '[data-testid="stSkipToContent"], [data-testid="stDataFrame"], [role="tooltip"], .js-plotly-plot, '
    + '[data-testid="stToolbar"], [data-testid="stHeader"], [data-testid="stTextInput"], '
    + '[data-testid="stTextArea"], [data-testid="stNumberInput"], [data-testid="stChatInput"], .st-key-example';
const boxes = [];
for (const e of document.body.querySelectorAll('*')) {
  if (e.namespaceURI !== 'http://www.w3.org/1999/xhtml' || e.closest(skip)) continue;
  const cs = getComputedStyle(e);
  if (!(cs.textOverflow === 'ellipsis' || cs.overflowX === 'hidden' || cs.overflowX === 'clip')) continue;
  if (cs.visibility === 'hidden' || !visible(e.getBoundingClientRect())) continue;
  const text = short(e.tagName === 'INPUT' || e.tagName === 'TEXTAREA' ? e.value : e.innerText);
  if (text && e.scrollWidth > e.clientWidth + 1) boxes.push([e, text]);
}
for (const [e, text] of boxes) {
  if (boxes.some(([inner]) => inner !== e && e.contains(inner))) continue;
  out.push(`${where(e)}: "${text}" cut off (${e.scrollWidth} px of text in ${e.clientWidth} px)`);
}
const column = e => (e.closest('[data-testid="stColumn"], [data-testid="stSidebarUserContent"], '
    + '[data-testid="stMainBlockContainer"]') || document.body).getBoundingClientRect();
const KINDS = [['.gtitle', 'chart title'], ['.g-xtitle, .g-x2title', 'x axis title'],
  ['.g-ytitle, .g-y2title', 'y axis title'], ['.xtick, .x2tick', 'x tick label'], ['.ytick, .y2tick', 'y tick label'],
  ['.legendtext, .legendtitletext', 'legend'], ['.cbtitle, .colorbar', 'colour bar'],
  ['.annotation', 'annotation']];
for (const plot of document.querySelectorAll('.js-plotly-plot')) {
  const box = plot.getBoundingClientRect();
  if (!visible(box)) continue;
  const title = short((plot.querySelector('.gtitle') || {}).textContent) || 'untitled';
  const col = column(plot);
  if (box.right > col.right + 1 || box.left < col.left - 1)
    out.push(`${where(plot)}: chart "${title}" is ${Math.round(box.width)} px wide `
             + `in a ${Math.round(col.width)} px column`);
  for (const t of plot.querySelectorAll('svg text')) {
    if (t.closest('.hoverlayer, .modebar')) continue;
    const r = t.getBoundingClientRect(), text = short(t.textContent);
    if (!text || !visible(r)) continue;
    const sides = [['left', box.left - r.left], ['right', r.right - box.right], ['top', box.top - r.top],
                   ['bottom', r.bottom - box.bottom]]
        .filter(([, d]) => d > 1).map(([side, d]) => `${Math.round(d)} px ${side}`);
    if (!sides.length) continue;
    const kind = (KINDS.find(([sel]) => t.closest(sel)) || [0, 'text'])[1];
    const of = kind === 'chart title' ? '' : ` of chart "${title}"`;
    out.push(`${where(plot)}: ${kind} "${text}"${of} cut off (${sides.join(', ')})`);
  }
}
for (const img of document.querySelectorAll('[data-testid="stImage"] img, [data-testid="stImageContainer"] img')) {
  const r = img.getBoundingClientRect(), col = column(img);
  if (visible(r) && (r.right > col.right + 1 || r.left < col.left - 1))
    out.push(`${where(img)}: image ${Math.round(r.width)} px wide in a ${Math.round(col.width)} px column`);
}
const measure = document.createElement('canvas').getContext('2d');
for (const frame of document.querySelectorAll('[data-testid="stDataFrame"]')) {
  const canvas = frame.querySelector('canvas');
  if (!canvas) continue;
  const fiberKey = Object.keys(canvas).find(k => k.startsWith('__reactFiber$'));
  let fiber = fiberKey && canvas[fiberKey], props = null;
  for (let depth = 0; fiber && depth < 12 && !props; depth++, fiber = fiber.return) {
    const p = fiber.memoizedProps;
    if (p && Array.isArray(p.columns) && p.theme && p.columns.every(c => typeof c.width === 'number')) props = p;
  }
  if (!props) continue;
  const theme = props.theme, pad = theme.cellHorizontalPadding || 8;
  measure.font = `${theme.headerFontStyle} ${theme.fontFamily}`;
  for (const c of props.columns) {
    const title = String(c.title || '');
    if (!title) continue;
    const need = measure.measureText(title).width + 2 * pad + (c.icon ? (theme.headerIconSize || 18) + pad : 0);
    if (need > c.width + 1)
      out.push(`${where(frame)}: dataframe header "${short(title)}" cut off `
               + `(${Math.round(need)} px of text in a ${Math.round(c.width)} px column)`);
  }
}
return [...new Set(out)];
"""


def truncated_elements(driver) -> list[str]:
    """Descriptions of the texts the page shown in `driver` (a selenium WebDriver, or a Browser) cuts off
    horizontally, or beyond a chart's edge (see CUT_TEXT); empty when every text is shown whole."""
    driver = getattr(driver, "driver", driver)
    return list(driver.execute_script(CUT_TEXT) or [])

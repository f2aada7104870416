"""Latency of the app in a browser after warm-up: from a click to the new content in the DOM, and to an idle app.

    python -m workbench.bench_browser [--run runs/pretrain-mini] [--repeats 10] [--width 1400]

`streamlit run workbench/app.py` on the run and headless Chromium (workbench.browser.Server and Browser).
Each action is timed inside the page with performance.now(): from the press of the mouse (pointerdown) on the
button, option or radio label to the first DOM change that shows the new content (the chart title or axis labels
that action changes), and to the app being idle: the last DOM change before the script has stopped and the page
has stayed unchanged for half a second (the toolbar's running indicator, tooltips and option lists do not count).
Unlike workbench.bench_app this includes the websocket round trips and the browser's drawing of the page.

Warm-up first: every page is opened once and the examples, words and solvers the measurements visit are shown
once (the model, the attention maps and the transport plans are then cached by the app, as after a user's first
look); those first times are printed separately.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

from uniter_core.cli import at_least, exit_with, run_command
from uniter_core.errors import UserError
from workbench.browser import Browser, Server, chromium_missing
from workbench.pages import REPO, page_url

TARGET_S = 1.0
QUIET_S = 0.5  # the page must stay unchanged this long to count as idle
EXAMPLES = 3  # the sidebar measurement cycles through the first examples of the split (cached after warm-up)

# The values that show an action's new content ('' while missing), as JavaScript function bodies.
TITLE = "const t = document.querySelector('.st-key-{key} .gtitle'); return t ? t.textContent : '';"
TICKS = "return [...document.querySelectorAll('.st-key-{key} .ytick text')].map(t => t.textContent).join('|');"

# Arms the observer: arguments[0] reads the content. Mutations in the toolbar (the running indicator), tooltips
# and option lists are ignored; B.t0 is the press that starts the action.
ARM = """
const IGNORED = 'header, [data-testid="stHeader"], [data-testid="portal"], [role="tooltip"], [role="listbox"], '
    + '[data-testid="stTooltipContent"], [data-testid="stSelectboxVirtualDropdown"]';
if (window.__wbBench) window.__wbBench.observer.disconnect();
const read = new Function(arguments[0]);
const B = window.__wbBench = {read, before: read(), t0: null, content: null, last: null, armed: performance.now()};
const skip = n => n.nodeType === 1 && (n.matches(IGNORED) || !!n.closest(IGNORED));
const relevant = m => {
  const target = m.target.nodeType === 1 ? m.target : m.target.parentElement;
  if (target && target.closest(IGNORED)) return false;
  const nodes = [...m.addedNodes, ...m.removedNodes];
  return !(m.type === 'childList' && nodes.length && nodes.every(skip));
};
B.observer = new MutationObserver(records => {
  const now = performance.now();
  if (B.t0 === null || !records.some(relevant)) return;
  B.last = now;
  if (B.content === null) {
    const value = B.read();
    if (value && value !== B.before) B.content = now;
  }
});
B.observer.observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true});
document.addEventListener('pointerdown', () => { if (B.t0 === null) B.t0 = performance.now(); },
                          {capture: true, once: true});
"""
POLL = """
const B = window.__wbBench;
const app = document.querySelector('[data-testid="stApp"]');
const script = app ? app.getAttribute('data-test-script-state') || 'notRunning' : 'initial';
const running = [...document.querySelectorAll('[data-testid="stStatusWidget"]')].some(
    e => !e.className.includes('StatusWidget-exit')) || !['notRunning', 'compilationError'].includes(script);
return {t0: B.t0 === null ? B.armed : B.t0, content: B.content, last: B.last, now: performance.now(), running};
"""


class Action:
    """One measured interaction: on `page`, `prepare(browser, i)` readies the i-th repetition (e.g. opens a select
    box) and returns the click; `content` is the JavaScript that reads what the click changes."""

    def __init__(self, page: str, content: str, prepare):
        self.page, self.content, self.prepare = page, content, prepare


def _button(key: str):
    return lambda browser, i: (lambda: browser.click(key))


def _option(key: str, among: int | None = None):
    """The option of a select box after the one shown, cycling through the first `among` options (all when None);
    the list is opened before the clock starts."""
    def prepare(browser: Browser, i: int):
        shown = browser.selected(key)
        texts = browser.options(key)
        count = min(among or len(texts), len(texts))
        current = texts.index(shown) if shown in texts else 0
        return browser.open_options()[(current + 1) % count].click
    return prepare


def _radio(key: str):
    def prepare(browser: Browser, i: int):
        labels = browser.radio_labels(key)
        chosen = browser.script(f"const e = document.querySelector('.st-key-{key} input:checked'); "
                                f"return e ? e.value : '0';")
        label = labels[(int(chosen or 0) + 1) % len(labels)]
        return lambda: browser.radio(key, label)
    return prepare


ACTIONS = {
    "head explorer: next head": Action("head_explorer", TITLE.format(key="head_heatmap"), _button("head_next")),
    "head explorer: next layer": Action("head_explorer", TITLE.format(key="head_heatmap"), _button("layer_next")),
    "image view: another word": Action("image_view", TITLE.format(key="image_word"), _option("word")),
    "optimal transport: solver switch": Action("transport", TITLE.format(key="ot_plan"), _radio("ot_solver")),
    "sidebar: another example": Action("head_explorer", TICKS.format(key="head_heatmap"),
                                       _option("example", among=EXAMPLES)),
}


def measure(browser: Browser, action: Action, i: int, timeout: float = 120) -> tuple[float, float]:
    """(seconds to the new content, seconds to an idle app) of one repetition."""
    click = action.prepare(browser, i)
    browser.script(ARM, action.content)
    click()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = browser.script(POLL)
        if state["content"] is not None and not state["running"] and state["now"] - state["last"] >= 1000 * QUIET_S:
            return (state["content"] - state["t0"]) / 1000, (state["last"] - state["t0"]) / 1000
        time.sleep(0.05)
    raise UserError(f"{action.page}: no new content or no idle app within {timeout:.0f} s after the click")


def summary(name: str, times: list[tuple[float, float]]) -> str:
    content, idle = [t[0] for t in times], [t[1] for t in times]
    return (f"{name:<34} new content: median {1000 * statistics.median(content):5.0f} ms, max "
            f"{1000 * max(content):5.0f} ms ({statistics.median(content) / TARGET_S:4.2f} x target) | idle: median "
            f"{1000 * statistics.median(idle):5.0f} ms, max {1000 * max(idle):5.0f} ms "
            f"({statistics.median(idle) / TARGET_S:4.2f} x target) | {len(times)} clicks")


def bench_browser(*, run: str | Path = "runs/pretrain-mini", repeats: int = 10, width: int = 1400,
                  log: Path | None = None) -> tuple[dict[str, float], dict[str, list[tuple[float, float]]]]:
    """(warm-up seconds by step, [(seconds to new content, seconds to idle)] by action) of the app opened on the
    run folder `run`, in a browser window `width` CSS pixels wide."""
    missing = chromium_missing()
    if missing:
        raise UserError(missing)
    if not (Path(run) / "train_config.json").exists():
        raise UserError(f"{run} is not a run folder (make the demo run with `make demo`)")
    run = Path(run).resolve()
    shown = run.relative_to(REPO) if run.is_relative_to(REPO) else run  # the server runs in the repository
    warm, results = {}, {}
    with Server({"WORKBENCH_RUN": str(shown)}, log=log) as server, Browser(width, 1000) as browser:
        for name, action in ACTIONS.items():
            start = time.perf_counter()
            browser.open(page_url(server.url, action.page))
            warm[f"{action.page}, opened"] = warm.get(f"{action.page}, opened", time.perf_counter() - start)
            # one round of what the measurements visit: afterwards the app serves them from its caches
            cycle = EXAMPLES if "example" in name else 3 if "solver" in name else 1
            firsts = [measure(browser, action, i) for i in range(cycle)]
            warm[f"{name}, slowest of the first {cycle} click{'s' if cycle > 1 else ''} (to idle)"] = max(
                t[1] for t in firsts)
            results[name] = [measure(browser, action, i) for i in range(repeats)]
    return warm, results


def _cli(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/pretrain-mini")
    p.add_argument("--repeats", type=at_least(1), default=10)
    p.add_argument("--width", type=at_least(600), default=1400, help="browser window width in CSS pixels")
    args = p.parse_args(argv)
    warm, results = bench_browser(run=args.run, repeats=args.repeats, width=args.width)
    print(f"run {args.run}, {os.cpu_count()} CPU cores visible, browser {args.width} px wide, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")
    for name, seconds in warm.items():
        print(f"warm-up: {name:<72} {seconds:6.2f} s")
    for name, times in results.items():
        print(summary(name, times))
    for i, what in enumerate(("new content", "idle app")):
        worst = max(statistics.median(t[i] for t in times) for times in results.values())
        print(f"slowest median click -> {what}: {1000 * worst:.0f} ms = {worst / TARGET_S:.2f} x the "
              f"{TARGET_S:.0f} s target ({'within' if worst < TARGET_S else 'OVER'})")


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())

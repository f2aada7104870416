"""Screenshots of the app's pages: a Streamlit server plus headless Chromium, driven over the DevTools protocol.

    python -m workbench.screenshots --run runs/pretrain-mini --out docs/screenshots [--pages overview,head_explorer]

Chromium's own --screenshot flag cannot wait for a Streamlit page (its virtual time does not cover the
websocket traffic that draws the page), so the browser is driven instead: open the page, wait until its key
text is on screen and the app has stopped running, then capture. The e2e test reuses `Server` and `Browser`.
PNGs are reduced to a 256-colour palette so that each stays well under 200 KB.
"""
from __future__ import annotations

import argparse
import base64
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from websockets.sync.client import connect

from uniter_core.cli import exit_with, run_command
from uniter_core.errors import UserError
from uniter_core.io import atomic_path
from uniter_core.outputs import check_output_file, png_text
from uniter_core.train_state import CheckpointManager

REPO = Path(__file__).resolve().parents[1]
# url path -> text that only that page shows once it has finished drawing (HTML text, not chart text)
PAGES = {"overview": "Per-head table", "head_explorer": "Predicted pattern", "image_view": "Attention on regions",
         "transport": "Solvers compared", "statistics": "Statistics folder", "label_heads": "Retrain the classifier",
         "training": "Steps logged"}
DEFAULT_SHOTS = ("overview", "head_explorer", "image_view", "transport")
MAX_BYTES = 200_000


def find_chromium() -> str | None:
    names = (os.environ.get("CHROMIUM", ""), "chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
    for name in names:
        if name and shutil.which(name):
            return shutil.which(name)
    return None


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
            [sys.executable, "-m", "streamlit", "run", str(REPO / "workbench" / "app.py"), "--server.headless", "true",
             "--server.address", "127.0.0.1", "--server.port", str(self.port), "--browser.gatherUsageStats", "false",
             "--server.fileWatcherType", "none", "--client.toolbarMode", "minimal"],
            cwd=REPO, env=self.env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"streamlit exited with {self.process.returncode} (log: {self.log})")
            try:
                with urllib.request.urlopen(f"{self.url}/_stcore/health", timeout=1) as r:
                    if r.read().strip() == b"ok":
                        return self
            except OSError:
                time.sleep(0.3)
        self.__exit__()
        raise RuntimeError(f"streamlit did not answer on {self.url} within 60 s (log: {self.log})")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()


class Browser:
    """Headless Chromium with one tab, controlled through the DevTools websocket."""

    def __init__(self, width: int = 1400, height: int = 1000, binary: str | None = None):
        self.size = (width, height)
        self.binary = binary or find_chromium()
        if not self.binary:
            raise RuntimeError("no chromium binary found (install it with `apt-get install -y chromium`)")
        self.calls = 0

    def __enter__(self) -> "Browser":
        self.profile = tempfile.mkdtemp(prefix="wb-chromium-")
        flags = ["--headless", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--mute-audio",
                 "--remote-debugging-port=0", "--remote-allow-origins=*", f"--user-data-dir={self.profile}",
                 f"--window-size={self.size[0]},{self.size[1]}", "about:blank"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            flags.insert(0, "--no-sandbox")  # Chromium refuses to run as root inside its sandbox
        self.process = subprocess.Popen([self.binary, *flags], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        port_file = Path(self.profile) / "DevToolsActivePort"
        deadline = time.time() + 30
        while not (port_file.exists() and port_file.read_text().strip()) and time.time() < deadline:
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            page = next(t for t in json.load(r) if t["type"] == "page")
        self.connection = connect(page["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.socket = self.connection.__enter__()
        self.call("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1], deviceScaleFactor=1,
                  mobile=False)
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.connection.__exit__(None, None, None)
        finally:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
            shutil.rmtree(self.profile, ignore_errors=True)

    def call(self, method: str, **params) -> dict:
        self.calls += 1
        self.socket.send(json.dumps({"id": self.calls, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=60))
            if message.get("id") == self.calls:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    def evaluate(self, expression: str):
        return self.call("Runtime.evaluate", expression=expression, returnByValue=True)["result"].get("value")

    def open(self, url: str, text: str, timeout: float = 90) -> dict[str, str]:
        """Load url and wait until `text` (or a message box instead) shows, the script has stopped and the charts
        are drawn; returns the page's DOM as {"html": markup, "text": rendered text}."""
        self.call("Page.navigate", url=url)
        deadline, stable, last = time.time() + timeout, 0, None
        probe = ("[document.body ? document.body.innerText : '', "
                 "!!document.querySelector('[data-testid=\"stStatusWidget\"]'), "
                 "document.querySelectorAll('.js-plotly-plot .main-svg').length, "
                 "document.querySelectorAll('[data-testid=\"stSkeleton\"]').length, "
                 "document.querySelectorAll('.stAlert').length]")
        while time.time() < deadline:
            body, running, charts, skeletons, alerts = self.evaluate(probe) or ["", True, 0, 0, 0]
            state = (charts, len(body))
            ready = (text in body or alerts > 0) and not running and not skeletons
            stable = stable + 1 if ready and state == last else 0
            last = state
            if stable >= 3:  # unchanged over three polls: plotly has finished drawing
                return {"html": self.evaluate("document.documentElement.outerHTML"), "text": body}
            time.sleep(0.4)
        raise TimeoutError(f"{url}: {text!r} did not appear within {timeout:.0f} s; the page shows: {body[:600]!r}")

    def screenshot(self) -> bytes:
        return base64.b64decode(self.call("Page.captureScreenshot", format="png")["data"])


def shrink(png: bytes, max_bytes: int = MAX_BYTES) -> bytes:
    """A 256-colour palette PNG (screenshots are mostly flat colour), downscaled until under max_bytes."""
    from PIL import Image, PngImagePlugin

    image = Image.open(io.BytesIO(png)).convert("RGB")
    while True:
        buffer = io.BytesIO()
        info = PngImagePlugin.PngInfo()
        info.add_text("Source", PNG_SOURCE)
        image.quantize(256, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True, pnginfo=info)
        if buffer.tell() <= max_bytes or image.width < 500:
            return buffer.getvalue()
        image = image.resize((int(image.width * 0.85), int(image.height * 0.85)), Image.Resampling.LANCZOS)


PNG_SOURCE = "workbench.screenshots"  # the PNG text chunk Source of every screenshot: marks this command's files


def _is_own_screenshot(path: Path) -> bool:
    """A screenshot of this command (PNG Source text), or one of the repository's committed screenshots."""
    return png_text(path).get("Source") == PNG_SOURCE or path.resolve().parent == REPO / "docs" / "screenshots"


def take(out: Path, pages=DEFAULT_SHOTS, env: dict[str, str] | None = None,
         log: Path | None = None) -> dict[str, dict[str, str]]:
    """Screenshot each page into out/<page>.png (atomically; a file there that is not a screenshot of this
    command is refused before the app starts); returns each page's DOM (Browser.open) for checks."""
    for page in pages:
        check_output_file(out / f"{page}.png", "workbench.screenshots", _is_own_screenshot)
    doms = {}
    with Server(env, log=log) as server, Browser() as browser:
        for page in pages:
            doms[page] = browser.open(f"{server.url}/{'' if page == 'overview' else page}", PAGES[page])
            with atomic_path(out / f"{page}.png") as tmp:
                tmp.write_bytes(shrink(browser.screenshot()))
    return doms


def screenshots(*, run: str | Path = "runs/pretrain-mini", out: Path = REPO / "docs" / "screenshots",
                pages=DEFAULT_SHOTS) -> list[Path]:
    """Screenshot `pages` (names of PAGES) of the app opened on the run folder `run` into out/<page>.png;
    returns the files. UserError when no Chromium is installed."""
    if not find_chromium():
        raise UserError("no chromium found; install it with `apt-get install -y chromium`")
    if not CheckpointManager(run).intact(need_state=False) or not (Path(run) / "train_config.json").is_file():
        raise UserError(f"--run {run} is not a run folder with a checkpoint (train one with python -m "
                        f"uniter_core.train); the screenshots would show an error page")
    run = Path(run).resolve()
    shown = run.relative_to(REPO) if run.is_relative_to(REPO) else run  # the server runs in the repository
    take(out, pages, {"WORKBENCH_RUN": str(shown)})
    return [out / f"{page}.png" for page in pages]


def _cli(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/pretrain-mini", help="run folder the app opens")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    p.add_argument("--pages", default=",".join(DEFAULT_SHOTS), help=f"comma-separated, from: {', '.join(PAGES)}")
    args = p.parse_args(argv)
    pages = [x.strip() for x in args.pages.split(",") if x.strip()]
    unknown = [x for x in pages if x not in PAGES]
    if unknown:
        p.error(f"unknown page {unknown[0]!r} (known: {', '.join(PAGES)})")
    for path in screenshots(run=args.run, out=args.out, pages=pages):
        print(f"{path}: {path.stat().st_size / 1000:.0f} KB")


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())

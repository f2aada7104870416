"""Screenshots of the app's pages: a Streamlit server plus headless Chromium, driven through Selenium.

    python -m workbench.screenshots --run runs/pretrain-mini --out docs/screenshots [--pages overview,head_explorer]

Chromium's own --screenshot flag cannot wait for a Streamlit page (its virtual time does not cover the
websocket traffic that draws the page), so the browser is driven instead: open the page at its address, wait
until its title is on screen, the app has stopped running and the page has stopped changing, then capture.
The server and the browser are workbench.browser's `Server` and `Browser`.
PNGs are reduced to a 256-colour palette so that each stays well under 200 KB.
"""
from __future__ import annotations

import argparse
import io
from pathlib import Path

from uniter_core.cli import at_least, exit_with, run_command
from uniter_core.errors import UserError
from uniter_core.io import atomic_path
from uniter_core.outputs import check_output_file, png_text
from uniter_core.train_state import CheckpointManager
from workbench.browser import Browser, Server, chromium_missing
from workbench.pages import PAGES as APP_PAGES
from workbench.pages import REPO, page_url

DEFAULT_SHOTS = ("overview", "head_explorer", "image_view", "transport", "statistics", "training", "importance",
                 "grounding", "relevance")
MAX_BYTES = 200_000
# url path -> the page's title (h1): what Browser.open waits for in the main area, beside the app becoming idle
PAGES = {page.url: page.title for page in APP_PAGES}


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


def shoot(browser: Browser, base: str, out: Path, pages=DEFAULT_SHOTS, suffix: str = "") -> dict[str, dict[str, str]]:
    """Open each page in `browser` and write out/<page><suffix>.png (atomically); returns each page's DOM."""
    doms = {}
    for page in pages:
        doms[page] = browser.open(page_url(base, page), PAGES[page])
        with atomic_path(out / f"{page}{suffix}.png") as tmp:
            tmp.write_bytes(shrink(browser.screenshot()))
    return doms


def take(out: Path, pages=DEFAULT_SHOTS, env: dict[str, str] | None = None, log: Path | None = None,
         width: int = 1400, height: int = 1000) -> dict[str, dict[str, str]]:
    """Screenshot each page into out/<page>.png (atomically; a file there that is not a screenshot of this
    command is refused before the app starts); returns each page's DOM (Browser.open) for checks."""
    for page in pages:
        check_output_file(out / f"{page}.png", "workbench.screenshots", _is_own_screenshot)
    with Server(env, log=log) as server, Browser(width, height) as browser:
        return shoot(browser, server.url, out, pages)


def screenshots(*, run: str | Path = "runs/pretrain-mini", out: Path = REPO / "docs" / "screenshots",
                pages=DEFAULT_SHOTS, width: int = 1400) -> list[Path]:
    """Screenshot `pages` (names of PAGES) of the app opened on the run folder `run` into out/<page>.png;
    returns the files. UserError when Chromium or its driver is not installed."""
    missing = chromium_missing()
    if missing:
        raise UserError(missing)
    if not CheckpointManager(run).intact(need_state=False) or not (Path(run) / "train_config.json").is_file():
        raise UserError(f"--run {run} is not a run folder with a checkpoint (train one with python -m "
                        f"uniter_core.train); the screenshots would show an error page")
    run = Path(run).resolve()
    shown = run.relative_to(REPO) if run.is_relative_to(REPO) else run  # the server runs in the repository
    take(out, pages, {"WORKBENCH_RUN": str(shown)}, width=width)
    return [out / f"{page}.png" for page in pages]


def _cli(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/pretrain-mini", help="run folder the app opens")
    p.add_argument("--out", type=Path, default=REPO / "docs" / "screenshots")
    p.add_argument("--pages", default=",".join(DEFAULT_SHOTS), help=f"comma-separated, from: {', '.join(PAGES)}")
    p.add_argument("--width", type=at_least(600), default=1400, help="browser window width in CSS pixels")
    args = p.parse_args(argv)
    pages = [x.strip() for x in args.pages.split(",") if x.strip()]
    unknown = [x for x in pages if x not in PAGES]
    if unknown:
        p.error(f"unknown page {unknown[0]!r} (known: {', '.join(PAGES)})")
    for path in screenshots(run=args.run, out=args.out, pages=pages, width=args.width):
        print(f"{path}: {path.stat().st_size / 1000:.0f} KB")


def main(argv=None) -> int:
    return run_command(_cli, argv)


if __name__ == "__main__":
    exit_with(main())

"""End to end: `streamlit run workbench/app.py` on a tiny trained run, every page loaded in headless Chromium.

Needs a chromium binary (`make chromium` installs it from Debian when run as root). Without one the test is
skipped with the reason, except under CI (CI=true), where a missing browser is a failure. The screenshots go to
a temporary folder, or to $WORKBENCH_E2E_SCREENSHOTS when set.
"""
import os
from pathlib import Path

import pytest
from PIL import Image

from workbench import screenshots

# Text each page must show once drawn, beyond the marker screenshots.PAGES waits for.
EXPECTED = {
    "overview": ["Dominant pattern per head", "Pattern fractions per layer"],
    "head_explorer": ["Layer 0, head 0", "Head statistics", "entropy"],
    "image_view": ["Where “", "Word → regions"],
    "transport": ["POT EMD", "L1 to the IPOT plan", "IPOT plan"],
    "statistics": ["python -m analyses.export_stats --run"],
    "label_heads": ["Gold set", "reversed block", "skip"],
    "training": ["Loss per task", "text→image R@1"],
}


@pytest.fixture(scope="module")
def browser_binary():
    binary = screenshots.find_chromium()
    if binary is None:
        message = "chromium is not installed (as root: `make chromium` or `apt-get install -y chromium`)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; under CI the browser test must run")
        pytest.skip(message)
    return binary


def test_every_page_renders_in_a_browser(browser_binary, workbench_env, tmp_path):
    out = Path(os.environ.get("WORKBENCH_E2E_SCREENSHOTS", tmp_path))  # e.g. kept as CI artefacts
    doms = screenshots.take(out, list(screenshots.PAGES), workbench_env, log=out / "server.log")
    for page, marker in screenshots.PAGES.items():
        text, html = doms[page]["text"], doms[page]["html"]
        assert marker in text, page
        for expected in EXPECTED[page]:
            assert expected in text or expected in html, f"{page}: {expected!r} missing"
        assert 'data-testid="stException"' not in html and "Traceback" not in text, page
        shot = out / f"{page}.png"
        assert shot.stat().st_size < screenshots.MAX_BYTES
        with Image.open(shot) as image:
            assert image.size[0] >= 1000 and len(image.getcolors(256) or []) > 8, page  # not a blank page

"""The app's pages, in one list that the app (workbench/app.py) and the browser tools read alike.

Each entry: the view file (under workbench/), its name in the navigation, its icon, its url path, and the title
the page draws (its h1). The first page is the default, which Streamlit serves at the root address; every other
page opens at /<url path>.
"""
from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

REPO = Path(__file__).resolve().parents[1]
APP = REPO / "workbench" / "app.py"


class Page(NamedTuple):
    view: str
    nav: str
    icon: str
    url: str
    title: str

    @property
    def address(self) -> str:
        """The path the page opens at: "/" for the default (first) page, else /<url path>."""
        return "/" if self is PAGES[0] else f"/{self.url}"


PAGES = (
    Page("views/start.py", "Start", ":material/home:", "start", "UNITER Workbench"),
    Page("views/overview.py", "Overview", ":material/grid_view:", "overview", "Overview"),
    Page("views/head_explorer.py", "Head explorer", ":material/blur_on:", "head_explorer", "Head explorer"),
    Page("views/image_view.py", "Image view", ":material/image:", "image_view", "Image view"),
    Page("views/transport.py", "Optimal transport", ":material/swap_horiz:", "transport", "Optimal transport"),
    Page("views/statistics.py", "Statistics", ":material/table_chart:", "statistics", "Statistics"),
    Page("views/importance.py", "Head importance", ":material/content_cut:", "importance", "Head importance"),
    Page("views/grounding.py", "Grounding", ":material/my_location:", "grounding", "Grounding"),
    Page("views/relevance.py", "Why this match", ":material/psychology_alt:", "relevance", "Why this match"),
    Page("views/dynamics.py", "Training dynamics", ":material/timeline:", "dynamics", "Training dynamics"),
    Page("views/label_heads.py", "Label heads", ":material/label:", "label_heads", "Label heads"),
    Page("views/training.py", "Training", ":material/monitoring:", "training", "Training"),
)
BY_URL = {page.url: page for page in PAGES}


def page_url(base: str, url: str) -> str:
    """The address of the page with this url path on the server at `base` (e.g. http://127.0.0.1:8501)."""
    return base + BY_URL[url].address if url in BY_URL else f"{base}/{url}"

"""UNITER Workbench, the Streamlit app: `streamlit run workbench/app.py` from the repository root.

The entry point only sets up the page, the shared sidebar (model source, split, example) and the navigation;
each page is one file in workbench/views/. Defaults (run folder, classifier, gold set, statistics folder) can
be overridden with the WORKBENCH_* environment variables listed in workbench/settings.py.
"""
import streamlit as st

from workbench import ui  # the project is installed (`pip install -e .`, done by `make install`)

PAGES = [
    ("views/start.py", "Start", ":material/home:", "start"),
    ("views/overview.py", "Overview", ":material/grid_view:", "overview"),
    ("views/head_explorer.py", "Head explorer", ":material/blur_on:", "head_explorer"),
    ("views/image_view.py", "Image view", ":material/image:", "image_view"),
    ("views/transport.py", "Optimal transport", ":material/swap_horiz:", "transport"),
    ("views/statistics.py", "Statistics", ":material/table_chart:", "statistics"),
    ("views/label_heads.py", "Label heads", ":material/label:", "label_heads"),
    ("views/training.py", "Training", ":material/monitoring:", "training"),
]

st.set_page_config(page_title="UNITER Workbench", page_icon=":material/visibility:", layout="wide")
# The start page is the default, served at the root address; every other page opens at its own (/overview, …).
navigation = st.navigation([st.Page(path, title=title, icon=icon, url_path=url, default=i == 0)
                            for i, (path, title, icon, url) in enumerate(PAGES)])
st.sidebar.title("UNITER Workbench")
# Last line of defence: the pages report every known failure themselves (see workbench.ui); anything else is a
# bug, logged with its traceback on the server and shown as one line rather than a traceback in the browser.
try:
    ui.sidebar()
except Exception as error:
    ui.unexpected(error, "the sidebar", st.sidebar)
try:
    navigation.run()
except Exception as error:
    ui.unexpected(error, "this page")

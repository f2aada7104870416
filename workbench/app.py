"""UNITER Workbench, the Streamlit app: `streamlit run workbench/app.py` from the repository root.

The entry point only sets up the page, the shared sidebar (model source, split, example) and the navigation;
each page is one file in workbench/views/, listed in workbench/pages.py. Defaults (run folder, classifier, gold set, statistics folder) can
be overridden with the WORKBENCH_* environment variables listed in workbench/settings.py.
"""
import streamlit as st

from workbench import ui  # the project is installed (`pip install -e .`, done by `make install`)
from workbench.pages import PAGES


st.set_page_config(page_title="UNITER Workbench", page_icon=":material/visibility:", layout="wide")
# The start page is the default, served at the root address; every other page opens at its own (/overview, …).
navigation = st.navigation([st.Page(page.view, title=page.nav, icon=page.icon, url_path=page.url, default=i == 0)
                            for i, page in enumerate(PAGES)])
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

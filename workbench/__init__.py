"""The Streamlit workbench: `streamlit run workbench/app.py` (pages in workbench/views/; how data reaches each page
and where to add one: docs/ARCHITECTURE.md)."""

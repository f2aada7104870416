"""The Streamlit workbench: `streamlit run workbench/app.py` (pages in workbench/views/)."""

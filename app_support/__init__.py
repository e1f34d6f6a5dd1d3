"""Glue between the Streamlit pages and ``clafusion_core``: session-state keys, cached wrappers and
small UI helpers. No algorithm lives here; every number the app shows comes from the library."""

"""CLAFusion Explorer — ``python3 -m streamlit run app.py``.

The router: ``st.navigation`` over the pages registered in ``app_support.labels.PAGES`` (Home and the
four steps, files in ``app_pages/``). Page config, the session's defaults, a shared link's settings and the
sidebar are set up here, once per run, before the chosen page runs; so every page also works when opened
directly at its URL (``/Alignment``, ``/Fusion``, ``/Finetune``, ``/Compare``).
"""

from app_support import ui

ui.router().run()

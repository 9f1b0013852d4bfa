"Helpers for the browser tests (tests/test_browser.py): a JupyterLab server, a notebook page, pixel checks."

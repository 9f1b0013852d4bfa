"""Drive a notebook in JupyterLab the way a user does (open it, Run > Run All Cells, wait, look at the outputs, move a
slider) with Playwright and Debian's Chromium, and read back what the page shows."""
from __future__ import annotations
import os, re, shutil, time
from pathlib import Path

CHROMIUM_ARGS = ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
                 '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage']
ERROR_TEXT = re.compile(r'Traceback \(most recent call last\)|^\w*(Error|Exception)\b:|Error displaying widget|'
                        r'Failed to load model class|Error rendering', re.M)


def chromium_path() -> str | None:
    "Debian's Chromium, or the executable `$CHROMIUM` names; None when there is none."
    if (c := os.environ.get('CHROMIUM')): return c if os.access(c, os.X_OK) else None
    return shutil.which('chromium') or shutil.which('chromium-browser')


def missing_browser() -> str | None:
    "Why the browser tests cannot run here, or None when they can."
    if chromium_path() is None: return 'Chromium not found (`make browser-deps` installs Debian\'s, or set $CHROMIUM)'
    try: import playwright.sync_api  # noqa: F401
    except ImportError: return 'Python Playwright not installed (`make browser-deps`)'
    return None


def launch(playwright, **kwargs):
    "Headless Chromium with a fresh profile (Playwright makes a temporary user-data-dir) and no outside connections."
    return playwright.chromium.launch(executable_path=chromium_path(), headless=True, args=CHROMIUM_ARGS, **kwargs)


class NotebookPage:
    "A notebook open in JupyterLab in a Playwright `page`, with the page's uncaught script errors collected."
    def __init__(self, page, lab, path: str):
        self.page, self.lab, self.path = page, lab, path
        self.page_errors, self.console_errors = [], []
        page.on('pageerror', lambda e: self.page_errors.append(str(e)))
        page.on('console', lambda m: self.console_errors.append(m.text) if m.type == 'error' else None)

    def open(self, timeout: float = 120):
        "Open the notebook and wait until its kernel is idle."
        self.page.goto(f'{self.lab.url}/lab/tree/{self.path}?token={self.lab.token}', timeout=timeout * 1000)
        self.page.wait_for_selector('.jp-NotebookPanel .jp-Notebook .jp-Cell', timeout=timeout * 1000)
        self._accept_kernel_dialog()
        self.wait_idle(timeout, what='the kernel to start')
        return self

    def _accept_kernel_dialog(self):
        "A notebook without kernel metadata asks which kernel to start: take the default, as a user would."
        dlg = self.page.locator('.jp-Dialog .jp-mod-accept')
        try: dlg.wait_for(timeout=1500)
        except Exception: return
        dlg.click()

    def status(self) -> str | None:
        "The notebook's kernel status as its toolbar indicator shows it ('idle', 'busy', 'starting', ...)."
        return self.page.locator('.jp-NotebookPanel .jp-Notebook-ExecutionIndicator').first.get_attribute('data-status')

    def kernel_state(self) -> str | None:
        "The server's view of this notebook's kernel: its execution state, or None before it has one."
        for s in self.lab.api('GET', '/api/sessions'):
            if s.get('path') == self.path and s.get('kernel'): return s['kernel']['execution_state']
        return None

    def prompts(self) -> list[str]:
        "The input prompts of the code cells: '[3]:' when run, '[*]:' when queued or running, '[ ]:' when not run."
        # textContent, not innerText: JupyterLab skips rendering off-screen cells (content-visibility), and innerText
        # of an unrendered element is empty
        return [t.strip() for t in self.page.locator('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt').all_text_contents()]

    def wait_idle(self, timeout: float, what: str = 'the cells to finish'):
        "Wait until the kernel is idle (page and server agree) and no cell is queued or running."
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            last = (self.status(), self.kernel_state(), self.prompts())
            if last[0] == 'idle' and last[1] == 'idle' and not any('*' in p for p in last[2]): return
            time.sleep(1)
        raise TimeoutError(f'timed out after {timeout:.0f}s waiting for {what}: indicator {last[0]!r}, kernel '
                           f'{last[1]!r}, prompts {last[2]}')

    def run_all(self, timeout: float):
        "Run > Run All Cells from the menu bar, then wait for the kernel to go idle; returns the seconds it took."
        t0 = time.monotonic()
        self.page.get_by_role('menuitem', name='Run', exact=True).click()
        self.page.get_by_role('menuitem', name='Run All Cells', exact=True).click()
        self.page.wait_for_function("() => [...document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell .jp-InputPrompt')]"
                                    ".some(e => e.textContent.includes('*'))", timeout=30_000)
        self.wait_idle(timeout)
        return time.monotonic() - t0

    def cell(self, index: int):
        "The DOM cell at `index` of the notebook (as in the .ipynb file)."
        return self.page.locator(f'.jp-NotebookPanel .jp-Cell[data-windowed-list-index="{index}"]')

    def problems(self) -> list[str]:
        "What the page shows went wrong: error outputs, cells left unrun, widget render failures, uncaught script errors."
        out = []
        for el in self.page.locator('.jp-NotebookPanel .jp-OutputArea-output').all():
            text = el.text_content()
            if (m := ERROR_TEXT.search(text)): out.append(f'error output ({m.group(0)!r}): {text[-1500:]}')
        not_run = [i for i, p in enumerate(self.prompts()) if not re.fullmatch(r'\[\d+\]:', p)]
        if not_run: out.append(f'code cells not run (by position among the code cells): {not_run}')
        out += [f'error in the model: {e}' for e in self.model_errors()]
        out += [f'uncaught page error: {e}' for e in self.page_errors]
        if out and self.console_errors: out.append(f'(browser console errors, for context: {self.console_errors[-5:]})')
        return out

    def model_errors(self) -> list[str]:
        "The `error` outputs in the notebook's model (JupyterLab exposes its app object with `expose_app_in_browser`)."
        return self.page.evaluate("""() => {
            const app = window.jupyterapp; if (!app) return [];
            const errs = [];
            for (const w of app.shell.widgets('main')) {
                const cells = w.content && w.content.model ? w.content.model.toJSON().cells : [];
                for (const c of cells) for (const o of (c.outputs || []))
                    if (o.output_type === 'error') errs.push(`${o.ename}: ${o.evalue}`);
            }
            return errs; }""")


def slider(explorer, label: str):
    "The ipywidgets slider with description `label` inside `explorer`."
    return explorer.locator('.widget-slider').filter(has=explorer.page.locator('.widget-label', has_text=re.compile(f'^{label}$')))


def drag_to(page, slider_loc, frac: float):
    "Drag the slider's handle with the mouse to `frac` (0 = left end, 1 = right end) of its track and release."
    handle, track = slider_loc.locator('.noUi-handle'), slider_loc.locator('.noUi-base')
    handle.scroll_into_view_if_needed()
    h, t = handle.bounding_box(), track.bounding_box()
    page.mouse.move(h['x'] + h['width'] / 2, h['y'] + h['height'] / 2)
    page.mouse.down()
    x, y = t['x'] + frac * t['width'], h['y'] + h['height'] / 2
    page.mouse.move(x, y, steps=8)
    page.mouse.up()


def wait_changed(get, before, timeout: float) -> bool:
    "Poll `get()` until it differs from `before`; False on timeout."
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if get() != before: return True
        time.sleep(0.25)
    return False

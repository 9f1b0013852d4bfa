"""The tutorial as a user runs it: JupyterLab in headless Chromium, Run All, no error on the page, the overlay gallery
and the threshold explorer rendered and live (GitHub issue #8).

Needs Debian's `chromium` and Python Playwright (`make browser-deps`); skipped without them, except on CI where that is a
failure. `PNEUMOKIT_BROWSER_NB` picks another notebook (a path in the repo, or a file to copy into the repo's copy),
`PNEUMOKIT_SCREENSHOTS` the folder for the screenshots (default `reports/browser`; `make screenshots` writes the README's
`docs/screenshots`), `PNEUMOKIT_BROWSER_TIMEOUT` the seconds Run All may take. Timings, pixel counts and the metric
before and after the slider move go to `reports/browser/browser_test.json`, a failing page to `failure_page.png` there.
"""
import io, json, os, re, shutil, time
from pathlib import Path

import nbformat
import pytest
from PIL import Image

from browser.jlab import ROOT, JupyterLab, copy_repo, port_in_use
from browser.lab_page import NotebookPage, drag_to, slider, wait_changed
from browser.pixels import grey_std, palette_counts

TUTORIAL = os.environ.get('PNEUMOKIT_BROWSER_NB', 'nbs/tutorials/siim_end_to_end.ipynb')
REPORTS = ROOT/'reports'/'browser'
SHOTS = ROOT/os.environ.get('PNEUMOKIT_SCREENSHOTS', REPORTS)  # relative to the repo; `make screenshots`: docs/screenshots
RUN_TIMEOUT = float(os.environ.get('PNEUMOKIT_BROWSER_TIMEOUT', 900))
README_SHOTS = {'overlay_gallery.png': 'overlay gallery', 'threshold_explorer.png': 'threshold explorer'}
MIN_STD, MIN_CLASS_PIXELS, MAX_PNG_BYTES = 10, 20, 300_000
VIEWPORT = dict(width=1500, height=1000)




def _page(browser):
    page = browser.new_page(viewport=VIEWPORT, device_scale_factor=1)
    page.set_default_timeout(30_000)
    return page


def _stopped_clean(lab):
    st = lab.stopped
    assert st is not None and st['clean'], f'server not stopped cleanly: {st}'
    assert not port_in_use(lab.port), f'port {lab.port} still in use after the server stopped'


def _pid_alive(pid: int) -> bool:
    try: os.kill(pid, 0)
    except ProcessLookupError: return False
    return True


def test_failed_run_is_reported_and_server_stops(browser, tmp_path):
    "A notebook that raises fails the check (the checker is not blind), and a run that fails still stops the server."
    (tmp_path/'fails.ipynb').write_text(nbformat.writes(nbformat.v4.new_notebook(
        cells=[nbformat.v4.new_code_cell(s) for s in ("print('ok')", "import warnings; warnings.warn('only a warning')",
                                                      '1/0', "print('never')")],
        metadata={'kernelspec': {'name': 'python3', 'display_name': 'Python 3', 'language': 'python'}})))
    lab, kernels = JupyterLab(tmp_path), []
    with pytest.raises(RuntimeError, match='the run failed'):
        with lab:
            nb = NotebookPage(_page(browser), lab, 'fails.ipynb').open()
            nb.run_all(timeout=120)
            problems = nb.problems()
            kernels = [p.pid for p in lab.processes()[1:]]
            raise RuntimeError(f'the run failed: {problems}')
    msg = str(lab.stopped) + ' ' + lab.log_tail()
    _stopped_clean(lab)
    assert kernels, f'no kernel process was seen under the server: {msg}'
    assert not [p for p in kernels if _pid_alive(p)], f'kernel processes left behind: {kernels}'
    assert lab.proc.returncode is not None
    text = '\n'.join(problems)
    assert 'ZeroDivisionError' in text and 'code cells not run' in text and 'only a warning' not in text, problems


def _tutorial_in(repo: Path) -> str:
    "The tutorial's path relative to `repo` (a file outside the repo is copied into the copy's nbs/tutorials)."
    src = Path(TUTORIAL)
    if not src.is_absolute() and (ROOT/src).is_file(): return src.as_posix()
    if not (src.is_absolute() and src.is_file()):
        pytest.fail(f'the tutorial {TUTORIAL} does not exist (PNEUMOKIT_BROWSER_NB names the notebook to test)')
    dest = repo/'nbs'/'tutorials'/src.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy2(src, dest)
    return dest.relative_to(repo).as_posix()


def _figure_cell(nb: NotebookPage, nb_file: Path):
    "The image output of the last cell that calls `gallery(`, `oof_gallery(` or `plot_overlays(`."
    cells = json.loads(nb_file.read_text())['cells']
    idx = [i for i, c in enumerate(cells)
           if c['cell_type'] == 'code' and re.search(r'(gallery|plot_overlays)\(', ''.join(c['source']))]
    assert idx, f'{nb_file.name} has no cell calling gallery( or plot_overlays('
    for i in reversed(idx):
        img = nb.cell(i).locator('.jp-OutputArea-output img')
        if img.count(): return img.last
    texts = [nb.cell(i).locator('.jp-OutputArea').text_content()[:300] for i in idx]
    pytest.fail(f'no overlay figure is shown: the outputs of the gallery cells {idx} are {texts} (a bare matplotlib '
                'Figure shows as text in a fresh kernel until the inline backend is active)')


def _check_overlay_png(png: bytes, what: str, all_classes: bool) -> dict:
    std, counts = grey_std(png), palette_counts(png)
    assert std > MIN_STD, f'the {what} screenshot is blank (grey std {std:.1f})'
    seen = {k for k, n in counts.items() if n >= MIN_CLASS_PIXELS}
    missing = set(counts) - seen if all_classes else set() if seen else {'any class'}
    assert not missing, f'no {missing} overlay colour in the {what} screenshot (pixels per class: {counts})'
    return dict(std=round(std, 1), **counts)


def _save(png: bytes, name: str) -> Path:
    "Write a screenshot, recompressed (it is meant to be committed)."
    SHOTS.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(png)).convert('RGB').save(SHOTS/name, optimize=True)
    return SHOTS/name


def _explorer(page):
    "The threshold explorer: the box the tutorial tags `pneumokit-explorer`, else any box with sliders, a Dice and an image."
    tagged = page.locator('.jp-NotebookPanel .pneumokit-explorer')
    if tagged.count(): return tagged.last
    return (page.locator('.jp-NotebookPanel .widget-vbox').filter(has=page.locator('.widget-slider'))
            .filter(has=page.locator('img.widget-image')).filter(has_text='Kaggle Dice').last)


def _move_until_metric_changes(page, ex, metric_before: str) -> tuple[str, str, float]:
    """Drag a slider to its far end, as a user would, until the Kaggle Dice changes: `bottom` first (it always matters;
    `top` does nothing while `min area` is 0), then `top`, then the near ends. Returns the metric, the move, the seconds."""
    metric = ex.locator('.widget-html-content')
    for label, far in (('bottom', True), ('top', True), ('bottom', False), ('top', False)):
        s = slider(ex, label)
        readout = s.locator('.widget-readout')
        value_before, t0 = readout.text_content(), time.monotonic()
        frac = float(far) if float(value_before) <= 0.5 else float(not far)
        drag_to(page, s, frac)
        assert wait_changed(readout.text_content, value_before, 10), f'dragging the {label} slider to {frac} did not move it'
        if wait_changed(metric.text_content, metric_before, 30):
            return metric.text_content(), f'{label} {value_before} -> {readout.text_content()}', time.monotonic() - t0
    pytest.fail(f'moving the bottom and top sliders to both ends left the metric at {metric_before!r}')


def _failure_screenshot(page):
    "What the page looked like when the test failed, in reports/browser (never in the committed screenshots)."
    try:
        REPORTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=REPORTS/'failure_page.png')
    except Exception: pass  # a crashed page: the assertion itself says what went wrong


def _shot(loc) -> bytes:
    "A screenshot of `loc` once it is in view and its images are decoded."
    loc.scroll_into_view_if_needed()
    loc.evaluate("e => Promise.all([...(e.tagName === 'IMG' ? [e] : e.querySelectorAll('img'))].map(i => i.decode()))")
    return loc.screenshot()


def _check_explorer(page, ex) -> dict:
    "The explorer's sliders exist and a dragged slider changes the Kaggle Dice and the overlay image."
    for label in ('top', 'min area', 'bottom'): assert slider(ex, label).count() == 1, f'no {label!r} slider in the explorer'
    img = ex.locator('img.widget-image')
    metric_before, src_before, png_before = ex.locator('.widget-html-content').text_content(), img.get_attribute('src'), _shot(img)
    metric_after, moved, seconds = _move_until_metric_changes(page, ex, metric_before)
    assert re.search(r'Kaggle Dice \d\.\d{4}', metric_after), metric_after
    assert wait_changed(lambda: img.get_attribute('src'), src_before, 30), 'the overlay image did not update'
    assert _shot(img) != png_before, 'the overlay image was replaced by an identical one'
    return dict(slider=moved, seconds=round(seconds, 1), metric_before=metric_before, metric_after=metric_after)


def test_tutorial_in_jupyterlab(browser, tmp_path):
    "Run All on the tutorial in JupyterLab: no error, the gallery's three colours, a live threshold explorer."
    t0, timings, shots = time.monotonic(), {}, {}
    repo = copy_repo(tmp_path/'repo')
    rel = _tutorial_in(repo)
    with JupyterLab(repo) as lab:
        timings['server_start'] = time.monotonic() - t0
        page = _page(browser)
        try:
            nb = NotebookPage(page, lab, rel).open()
            timings['open'] = time.monotonic() - t0 - timings['server_start']
            timings['run_all'] = nb.run_all(RUN_TIMEOUT)
            assert not (problems := nb.problems()), f'{rel} in JupyterLab:\n' + '\n'.join(problems)
            shots['overlay_gallery.png'] = _shot(_figure_cell(nb, repo/rel))
            gallery = _check_overlay_png(shots['overlay_gallery.png'], 'overlay gallery', all_classes=True)
            ex = _explorer(page)
            assert ex.count(), 'the threshold explorer did not render (no widget box with sliders, "Kaggle Dice" and an image)'
            shots['threshold_explorer.png'] = _shot(ex)  # before the slider moves: the tutorial's starting point
            explorer = _check_overlay_png(shots['threshold_explorer.png'], 'threshold explorer', all_classes=False)
            explorer.update(_check_explorer(page, ex))
            assert not (problems := nb.problems()), 'after moving the slider:\n' + '\n'.join(problems)
        except BaseException:
            _failure_screenshot(page)
            raise
        finally: page.close()
    _stopped_clean(lab)
    timings['total'] = time.monotonic() - t0
    for name, png in shots.items(): _save(png, name)  # only a passing run replaces the screenshots
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS/'browser_test.json').write_text(json.dumps(dict(
        notebook=rel, timings={k: round(v, 1) for k, v in timings.items()}, gallery=gallery, explorer=explorer,
        server=lab.stopped), indent=1))


def test_readme_screenshots():
    "The README shows the committed screenshots, and they pass the checks the browser test makes (and are small)."
    readme = (ROOT/'README.md').read_text()
    for name, what in README_SHOTS.items():
        f = ROOT/'docs'/'screenshots'/name
        assert f.is_file(), f'{f} missing: `make screenshots` writes it'
        assert f.stat().st_size < MAX_PNG_BYTES, f'{f} is {f.stat().st_size} bytes'
        _check_overlay_png(f.read_bytes(), what, all_classes=name == 'overlay_gallery.png')
        assert f'docs/screenshots/{name}' in readme, f'README.md does not show docs/screenshots/{name}'

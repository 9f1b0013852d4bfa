"""The documentation site (`make docs`, GitHub issue #22): built from the executed notebooks, every exported name with an
API entry and its parameters' comments, and, in headless Chromium, every page opened with no broken internal link or
image, the search finding a function's page, and the overlay gallery, the threshold heatmap and an EDA figure loaded.

The build reuses the copies `make test`'s notebook stage saved (`tests/run_notebooks.py --save-executed build/executed`)
and executes only the notebooks missing there. The screenshots go to `reports/docs` (`PNEUMOKIT_SCREENSHOTS=docs/screenshots`
retakes the README's: `make docs-screenshots`); the per-page timings to `reports/docs/docs_test.json`.
`PNEUMOKIT_DOCS_SITE=folder` checks a site already built instead of building one.
"""
import html, importlib, inspect, io, json, os, re, sys, threading, time
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT/'docs'))
sys.path.insert(0, str(ROOT/'docs'/'_ext'))
import build_site as docs_build  # noqa: E402
from docments_fields import param_comments  # noqa: E402

REPORTS = ROOT/'reports'/'docs'
SHOTS = ROOT/os.environ.get('PNEUMOKIT_SCREENSHOTS', REPORTS)
README_SHOTS = {'docs_notebook_page.png': 'nbs/14_viz.html', 'docs_api_page.png': 'api/pneumokit.rle.html'}
# The pictures the issue names: (page, a call in the cell whose output is the figure).
FIGURES = {'overlay gallery': ('nbs/14_viz.html', 'gallery('), 'threshold heatmap': ('nbs/12_postprocess.html', 'plot_search('),
           'EDA figure': ('nbs/04_eda.html', 'plot_mask_heatmap(')}
SEARCH = ('rle_decode', 'api/pneumokit.rle.html')
API_SHOT_ENTRY = 'pneumokit.rle.rle_decode'
MAX_PNG_BYTES = 300_000


@pytest.fixture(scope='module')
def site(tmp_path_factory) -> Path:
    "The site, built as `make docs` builds it (notebooks without a fresh executed copy are executed first)."
    if (given := os.environ.get('PNEUMOKIT_DOCS_SITE')): return Path(given)  # a site already built, to check it again
    out = tmp_path_factory.mktemp('docs')/'site'
    t0 = time.monotonic()
    assert docs_build.main(['--out', str(out)]) == 0, 'docs/build_site.py failed: see its message above'
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS/'build_seconds.txt').write_text(f'{time.monotonic() - t0:.1f}\n')
    return out


def _entry_text(page: str, full: str) -> str | None:
    "The text of the API entry `full` in `page`'s HTML, its signature to the next entry's, without tags or white space."
    start = page.find(f'id="{full}"')
    if start < 0: return None
    end = page.find('<dt class="sig sig-object py', start + 1)
    return _squeeze(html.unescape(re.sub(r'<[^>]+>', '', page[page.index('>', start) + 1:end if end > 0 else None])))


def _squeeze(s: str) -> str: return re.sub(r'\s+', '', s)


def _exported() -> list[tuple[str, str, object]]:
    "(module, name, object) of every name in a module's `__all__`."
    from pneumokit._modidx import d
    out = []
    for mod in d['syms']:
        m = importlib.import_module(mod)
        out += [(mod, n, getattr(m, n)) for n in getattr(m, '__all__', [])]
    return out


def test_every_export_has_an_api_entry(site):
    "Each exported function and class has an entry on its module's API page, with every parameter's comment."
    missing, no_comment, checked = [], [], 0
    for mod, name, obj in _exported():
        page = (site/'api'/f'{mod}.html').read_text()
        text = _entry_text(page, f'{mod}.{name}')
        if text is None: missing.append(f'{mod}.{name}'); continue
        if not (inspect.isfunction(obj) or inspect.isclass(obj)): continue
        for p, c in param_comments(obj, 'class' if inspect.isclass(obj) else 'function').items():
            checked += 1
            if _squeeze(c.replace('`', '')) not in text: no_comment.append(f'{mod}.{name}({p}): {c!r}')
    assert not missing, f'{len(missing)} exported names without an API entry: {missing[:20]}'
    assert not no_comment, f'{len(no_comment)} parameter comments missing from the API entries: {no_comment[:10]}'
    assert checked > 100, f'only {checked} parameter comments checked: is docments reading the sources?'


def test_api_entry_shows_doc_and_params(site):
    "An entry reads like nbdev's show_doc: signature with defaults, the docstring, each parameter with its comment."
    from pneumokit.rle import rle_decode
    text = _entry_text((site/'api'/'pneumokit.rle.html').read_text(), 'pneumokit.rle.rle_decode')
    assert text is not None and text.startswith('rle_decode(rle:str,shape:tuple[int,int]=(1024,1024)'), text
    assert _squeeze(inspect.getdoc(rle_decode).split('`')[0]) in text, text
    assert 'Parameters:rle--SIIMRLEstring' in text and 'image_id--namedinerrormessages' in text, text


def test_pages_follow_the_ladder(site):
    "Tutorials first, then one page per module in the ladder's order, each linking its module's API page."
    pages = docs_build.ladder()
    tut = [p for p in pages if p.parent.name == 'tutorials']
    assert pages[0].name == 'index.ipynb' and pages[1:1 + len(tut)] == tut, pages
    nav = (site/'notebooks.html').read_text()
    mods = [p for p in pages if p.parent.name == 'nbs' and p.name != 'index.ipynb']
    pos = [nav.find(f'href="nbs/{p.stem}.html"') for p in mods]
    assert all(i >= 0 for i in pos) and pos == sorted(pos), dict(zip([p.stem for p in mods], pos))
    for nb, mod in ((p, m) for m, p in docs_build.api_modules().items()):
        page = (site/Path(nb).with_suffix('.html')).read_text()
        assert f'api/{mod}.html' in page, f'{nb} does not link its API page'


def test_names_link_to_their_entries(site):
    "A name in backticks in a notebook's text, or in a docstring or comment, links to its API entry."
    viz = (site/'nbs'/'14_viz.html').read_text()
    assert 'href="../api/pneumokit.viz.html#pneumokit.viz.worst_images"' in viz  # `worst_images` in gallery's comment
    rle = (site/'nbs'/'01_rle.html').read_text()
    assert 'href="../api/pneumokit.rle.html#pneumokit.rle.read_labels"' in rle
    api = (site/'api'/'pneumokit.viz.html').read_text()
    assert 'href="#pneumokit.viz.worst_images"' in api


def test_stale_copy_is_not_used(tmp_path, monkeypatch):
    "An executed copy made from an older version of a notebook does not count as fresh (the build re-executes it)."
    rel = Path('nbs/01_rle.ipynb')
    monkeypatch.setattr(docs_build, 'EXECUTED', tmp_path)
    assert not docs_build._fresh(rel)
    nb = json.loads((ROOT/rel).read_text())
    (tmp_path/rel).parent.mkdir(parents=True)
    (tmp_path/rel).write_text(json.dumps({**nb, 'metadata': {**nb['metadata'], 'pneumokit': {'source_sha256': '0' * 64}}}))
    assert not docs_build._fresh(rel)
    (tmp_path/rel).write_text(json.dumps({**nb, 'metadata': {**nb['metadata'], 'pneumokit': {'source_sha256': docs_build._sha(ROOT/rel)}}}))
    assert docs_build._fresh(rel)
    with pytest.raises(docs_build.DocsError, match='no executed copy of nbs/02_dicom.ipynb'):
        docs_build.execute_missing([rel, Path('nbs/02_dicom.ipynb')], execute=False)


def test_staging():
    "What a notebook page gets: names linked to entries, repository links sent to the code host, widgets as a note, one copy of a figure."
    names = {'rle_decode': ['pneumokit.rle.rle_decode'], 'pneumokit.rle': ['pneumokit.rle'], 'x': ['pneumokit.a.x', 'pneumokit.b.x']}
    st = docs_build.Stager([Path('nbs/index.ipynb'), Path('nbs/01_rle.ipynb')], names, {'pneumokit.rle': 'nbs/01_rle.ipynb'},
                           'https://example.invalid/repo')
    md = st.markdown('`rle_decode()` in `pneumokit.rle`; `x` is ambiguous, `[y]` is no name; [RLE](01_rle.ipynb), '
                     '[the Makefile](../Makefile), [`rle_decode`](https://example.invalid)\n```\n`rle_decode`\n```', 'nbs', None)
    assert md.startswith('{py:obj}`rle_decode() <pneumokit.rle.rle_decode>` in {py:mod}`pneumokit.rle <pneumokit.rle>`; `x`'), md
    assert '[RLE](01_rle.ipynb)' in md and '[the Makefile](https://example.invalid/repo/blob/main/Makefile)' in md, md
    assert '[`rle_decode`](https://example.invalid)' in md and md.endswith('```\n`rle_decode`\n```'), md
    png = {'output_type': 'display_data', 'metadata': {}, 'data': {'image/png': 'iVBOR', 'text/plain': '<Figure>'}}
    widget = {'output_type': 'display_data', 'metadata': {}, 'data': {docs_build.WIDGET: {'model_id': 'm'}, 'text/plain': 'VBox(children=())'}}
    out = docs_build.Stager._outputs([png, png, widget])
    assert len(out) == 2 and out[0] == png, out
    assert docs_build.WIDGET not in out[1]['data'] and 'Interactive widget' in out[1]['data']['text/html'] and 'VBox' in out[1]['data']['text/html']


# ------------------------------------------------------------------------------------------------ in the browser
class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *a): pass


@pytest.fixture(scope='module')
def served(site):
    "The site over HTTP on the loopback address (as a code host's pages serve it)."
    srv = ThreadingHTTPServer(('127.0.0.1', 0), partial(_Quiet, directory=str(site)))
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f'http://127.0.0.1:{srv.server_address[1]}/'
    srv.shutdown(); srv.server_close()




def _page(browser, base: str):
    "A page whose requests outside the site are refused (the site must work offline), recording failed local loads."
    page = browser.new_page(viewport=dict(width=1400, height=1000), device_scale_factor=1)
    page.set_default_timeout(30_000)
    page.failed = []
    page.route(re.compile(r'^(?!' + re.escape(base) + ').*'), lambda route: route.abort())
    page.on('response', lambda r: page.failed.append(f'{r.status} {r.url}') if r.url.startswith(base) and r.status >= 400 else None)
    return page


_IMAGES_JS = """async () => {
  const imgs = [...document.images];
  await Promise.all(imgs.map(i => { i.loading = 'eager'; return i.decode().catch(() => null); }));
  return imgs.map(i => ({src: i.getAttribute('src'), w: i.naturalWidth}));
}"""
_LINKS_JS = """() => ({ids: [...document.querySelectorAll('[id]')].map(e => e.id),
  links: [...document.querySelectorAll('a[href]')].map(a => a.href)})"""


def test_site_in_browser(browser, served, site):
    "Every page opens; no local request fails, every image decodes (naturalWidth > 0), every internal link and anchor resolves."
    page, problems, ids, links, timings = _page(browser, served), [], {}, [], {}
    pages = sorted(p.relative_to(site).as_posix() for p in site.rglob('*.html') if '_static' not in p.relative_to(site).parts)
    assert len(pages) > 2*len(docs_build.api_modules()), pages
    try:
        for rel in pages:
            t0 = time.monotonic()
            page.goto(served + rel, wait_until='load')
            imgs = page.evaluate(_IMAGES_JS)
            problems += [f'{rel}: image {i["src"]} did not load' for i in imgs if not i['w']]
            found = page.evaluate(_LINKS_JS)
            ids[rel] = set(found['ids'])
            links += [(rel, h) for h in found['links'] if h.startswith(served)]
            timings[rel] = round(time.monotonic() - t0, 2)
        problems += [f'failed request {f}' for f in page.failed]
    finally: page.close()
    for rel, href in links:
        target, _, frag = href[len(served):].partition('#')
        target = target.split('?')[0] or 'index.html'
        if target.endswith('/'): target += 'index.html'
        if target not in ids and not (site/target).is_file(): problems.append(f'{rel}: broken link {href}')
        elif frag and target in ids and frag not in ids[target]: problems.append(f'{rel}: link {href} names no anchor on {target}')
    REPORTS.mkdir(parents=True, exist_ok=True)
    (REPORTS/'docs_test.json').write_text(json.dumps(dict(pages=len(pages), links=len(links), seconds=timings), indent=1))
    assert not problems, f'{len(problems)} problems:\n' + '\n'.join(problems[:30])


@pytest.mark.parametrize('what', FIGURES)
def test_figures_load(browser, served, what):
    "The cell that draws the figure shows it on its page, and the image actually loaded."
    rel, call = FIGURES[what]
    page = _page(browser, served)
    try:
        page.goto(served + rel, wait_until='load')
        img = _figure(page, call)
        assert img is not None, f'no cell calling {call} with an image output on {rel}'
        w = img.evaluate('i => i.decode().then(() => i.naturalWidth, () => 0)')
        assert w > 0, f'the {what} on {rel} did not load'
    finally: page.close()


def _figure(page, call: str):
    "The first image output of a cell whose code calls `call`, or None."
    cell = (page.locator('div.cell').filter(has=page.locator('div.cell_input', has_text=call))
            .filter(has=page.locator('div.cell_output img')))
    return cell.first.locator('div.cell_output img').first if cell.count() else None


def test_search_finds_a_function(browser, served):
    "Typing a function's name in the search box (Ctrl+K, as the box says) lists its API page among the results."
    name, target = SEARCH
    page = _page(browser, served)
    try:
        page.goto(served + 'index.html', wait_until='load')
        page.keyboard.press('Control+k')
        box = page.locator('input[name="q"]:visible').first
        box.fill(name)
        box.press('Enter')
        page.wait_for_url(re.compile(r'search\.html\?q='))
        page.locator(f'#search-results a[href*="{target}"]').first.wait_for(timeout=30_000)
        assert name in page.locator('#search-results').inner_text()
    finally: page.close()


def test_screenshots(browser, served):
    "Two pages as a reader sees them: the visualisation notebook at its overlay gallery, an API entry; neither blank."
    from browser.pixels import grey_std
    page = _page(browser, served)
    try:
        page.goto(served + README_SHOTS['docs_notebook_page.png'], wait_until='load')
        img = _figure(page, FIGURES['overlay gallery'][1])
        assert img is not None
        img.evaluate('i => { i.decode(); i.scrollIntoView({block: "center"}); }')
        shots = {'docs_notebook_page.png': page.screenshot()}
        page.goto(served + README_SHOTS['docs_api_page.png'] + '#' + API_SHOT_ENTRY, wait_until='load')
        page.locator(f'[id="{API_SHOT_ENTRY}"]').evaluate('e => e.scrollIntoView({block: "start"})')
        page.add_style_tag(content='#pst-back-to-top { display: none !important; }')
        page.mouse.wheel(0, -80)  # the entry's signature below the sticky header
        page.wait_for_timeout(200)
        shots['docs_api_page.png'] = page.screenshot()
    finally: page.close()
    for name, png in shots.items():
        assert grey_std(png) > 10, f'{name} is blank'
        _save(png, name)


def _save(png: bytes, name: str) -> None:
    "Write a screenshot, recompressed to 256 colours (the README's are committed)."
    from PIL import Image
    SHOTS.mkdir(parents=True, exist_ok=True)
    Image.open(io.BytesIO(png)).convert('RGB').quantize(256, method=Image.Quantize.FASTOCTREE).save(SHOTS/name, optimize=True)


def test_readme_shows_the_site():
    "The README explains the site and shows the two screenshots this test takes (committed, small)."
    readme = (ROOT/'README.md').read_text()
    assert 'make docs' in readme
    for name in README_SHOTS:
        f = ROOT/'docs'/'screenshots'/name
        assert f.is_file(), f'{f} missing: `make docs-screenshots` writes it'
        assert f.stat().st_size < MAX_PNG_BYTES, f'{f} is {f.stat().st_size} bytes'
        assert f'docs/screenshots/{name}' in readme, f'README.md does not show docs/screenshots/{name}'

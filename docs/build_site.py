"""`make docs`: the notebooks as a static HTML site in `_docs/`, built offline with Sphinx (myst-nb, pydata theme, autodoc).

1. Every notebook of the ladder needs an executed copy: `tests/run_notebooks.py --save-executed build/executed` (what
   `make test`'s notebook stage runs) leaves one per notebook that passed, tagged with the hash of the notebook it ran;
   a copy missing or older than its notebook is executed here the same way (a fresh copy of the tracked files).
2. The copies are staged in `build/docs/src` as nbdev shows a notebook: `#| hide` and `#| default_exp` cells left out,
   directive lines stripped, an `#| export` cell replaced by the API entries of the public names it defines (the
   `show_doc` of nbdev), a link to the module's API page under the title, `name` in backticks linked to its API entry,
   a note where a widget cannot render without a kernel, links to repository files outside the site sent to the code host.
3. Sphinx builds the tutorials, one page per module in the ladder's order, and `api/<module>` pages (autodoc plus
   `docs/_ext/docments_fields.py`, which turns each parameter's `# comment` into its documented field).
Usage: python docs/build_site.py [--out _docs] [--only GLOB ...] [--no-execute]"""
import argparse, ast, fnmatch, hashlib, inspect, json, os, re, shutil, subprocess, sys, tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT/'docs'
EXECUTED = ROOT/'build'/'executed'
STAGE = ROOT/'build'/'docs'
# The tutorials in the README's order; any other tutorial follows, sorted.
TUTORIALS = ['siim_end_to_end', 'kaggle_offline', 'first_place_gpu', 'spine_mri']
WIDGET = 'application/vnd.jupyter.widget-view+json'
DIRECTIVE = re.compile(r'^\s*#\|\s*([\w-]+)(.*)$')


class DocsError(Exception): "A problem the build reports as one line."


def ladder() -> list[Path]:
    "The site's notebooks, repo-relative, in reading order: the home page, the tutorials, then the modules by number."
    tuts = sorted((ROOT/'nbs'/'tutorials').glob('*.ipynb'), key=lambda p: (TUTORIALS.index(p.stem) if p.stem in TUTORIALS
                                                                           else len(TUTORIALS), p.name))
    mods = sorted(p for p in (ROOT/'nbs').glob('*.ipynb') if p.name != 'index.ipynb')
    return [Path('nbs/index.ipynb'), *(p.relative_to(ROOT) for p in (*tuts, *mods))]


def _show(p: Path) -> str: return str(p.relative_to(ROOT) if p.is_relative_to(ROOT) else p)


def _sha(p: Path) -> str: return hashlib.sha256(p.read_bytes()).hexdigest()


def _fresh(rel: Path) -> bool:
    "Whether build/executed holds a copy of `rel` executed from its current content."
    f = EXECUTED/rel
    if not f.is_file(): return False
    try: meta = json.loads(f.read_text()).get('metadata', {}).get('pneumokit', {})
    except json.JSONDecodeError: return False
    return meta.get('source_sha256') == _sha(ROOT/rel)


def execute_missing(nbs: list[Path], execute: bool = True) -> None:
    "Run the notebooks without a fresh executed copy (as `make test` does, saving their copies); fail naming any left."
    missing = [p for p in nbs if not _fresh(p)]
    if missing and execute:
        print(f'docs: executing {len(missing)} notebook(s) without a fresh executed copy: {" ".join(p.name for p in missing)}', flush=True)
        names = '|'.join(re.escape(p.name) for p in missing)
        subprocess.run([sys.executable, str(ROOT/'tests'/'run_notebooks.py'), '--save-executed', str(EXECUTED),
                        '--include-browser-nb', '--timing', '--n-workers', os.environ.get('NB_WORKERS', '2'), '--file-re', f'^({names})$', 'nbs'],
                       cwd=ROOT, check=False)
        missing = [p for p in nbs if not _fresh(p)]
    if missing:
        raise DocsError(f'no executed copy of {", ".join(map(str, missing))} in {_show(EXECUTED)} '
                        f'({"their run failed: see above" if execute else "run without --no-execute"})')


# ---------------------------------------------------------------- the package's names, for API entries and cross-links
def api_modules() -> dict[str, str]:
    "Module name (`pneumokit.rle`) -> the notebook that exports it (`nbs/01_rle.ipynb`), from each notebook's `default_exp`."
    out = {}
    for p in sorted((ROOT/'nbs').glob('*.ipynb')):
        for c in json.loads(p.read_text())['cells']:
            m = re.search(r'^#\|\s*default_exp\s+(\S+)', ''.join(c['source']), re.M)
            if m: out[f'pneumokit.{m.group(1)}'] = p.relative_to(ROOT).as_posix(); break
    return out


def public_names() -> dict[str, list[str]]:
    "Short name (`rle_decode`, `ThresholdExplorer.update`, `rle.rle_decode`) -> the full names with an API entry."
    from pneumokit._modidx import d
    import importlib
    out: dict[str, list[str]] = {}
    for mod, syms in d['syms'].items():
        m = importlib.import_module(mod)
        exported = set(getattr(m, '__all__', []))
        for full in syms:
            parts = full[len(mod) + 1:].split('.')
            if any(p.startswith('_') for p in parts) or parts[0] not in exported: continue
            for short in {'.'.join(parts), f"{mod.rsplit('.', 1)[1]}.{'.'.join(parts)}", full}: out.setdefault(short, []).append(full)
        out.setdefault(mod, []).append(mod)
    return out


def _defined(src: str) -> list[tuple[str, str]]:
    "The top-level (kind, name) an export cell defines: ('function'|'class', name), ('method', 'Class.name') for `@patch`."
    try: tree = ast.parse(src)
    except SyntaxError: return []
    out = []
    for n in tree.body:
        if isinstance(n, ast.ClassDef): out.append(('class', n.name))
        elif isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
            patched = any(getattr(d, 'id', getattr(d, 'attr', None)) == 'patch' or
                          getattr(getattr(d, 'func', None), 'id', None) == 'patch' for d in n.decorator_list)
            first = n.args.args[0].annotation if n.args.args else None
            if patched and first is not None: out.append(('method', f'{ast.unparse(first)}.{n.name}'))
            else: out.append(('function', n.name))
    return out


# ---------------------------------------------------------------------------------------------------- staging
class Stager:
    "Turns an executed notebook into the page Sphinx reads (see the module docstring, step 2)."
    def __init__(self, pages: list[Path], names: dict[str, list[str]], mods: dict[str, str], repo_url: str):
        self.pages, self.names, self.repo_url = {p.as_posix() for p in pages}, names, repo_url.rstrip('/')
        self.nb_mod = {nb: mod for mod, nb in mods.items()}
        self.assets: set[str] = set()

    def _resolve(self, name: str, own: str | None) -> str | None:
        "The full name `name` refers to: one candidate, or the one in the page's own module."
        cands = self.names.get(name.removesuffix('()'), [])
        if len(cands) > 1 and own: cands = [c for c in cands if c.startswith(own + '.')] or cands
        return cands[0] if len(cands) == 1 else None

    def _link(self, target: str, base: str) -> str:
        "A link target relative to repo folder `base`: pages and assets kept, other repository files sent to the code host."
        if re.match(r'^[a-z][\w+.-]*:|^#|^/', target) or not target: return target
        path, _, frag = target.partition('#')
        here = Path(base)/path
        norm = Path(os.path.normpath(here)).as_posix()
        if norm == 'nbs/index.ipynb': return os.path.relpath('index.ipynb', base or '.') + (f'#{frag}' if frag else '')
        if norm in self.pages: return target
        if (ROOT/norm).is_file():
            if norm.startswith('docs/') or re.search(r'\.(png|jpe?g|gif|svg)$', norm, re.I):
                self.assets.add(norm); return target
            return f'{self.repo_url}/blob/main/{norm}' + (f'#{frag}' if frag else '')
        if (ROOT/norm).is_dir(): return f'{self.repo_url}/tree/main/{norm}'
        return target

    def markdown(self, src: str, base: str, own: str | None) -> str:
        "Cross-link backticked names to their API entries and fix relative links, outside fenced code."
        parts = re.split(r'(^```.*?^```)', src, flags=re.M | re.S)
        for i in range(0, len(parts), 2):
            s = re.sub(r'(\]\()([^)\s]+)(\))', lambda m: m[1] + self._link(m[2], base) + m[3], parts[i])
            def code(m):
                full = self._resolve(m[1], own)
                if full is None: return m[0]
                role = 'py:mod' if full in self.nb_mod.values() else 'py:obj'
                return f'{{{role}}}`{m[1]} <{full}>`'
            parts[i] = re.sub(r'(?<![\[`\w{])`([A-Za-z_][\w.]*(?:\(\))?)`(?![`\]])', code, s)
        return ''.join(parts)

    def _api_cell(self, src: str, own: str) -> str | None:
        "The show_doc entries (`:no-index:`: the API page holds the indexed one) of the public names an export cell defines."
        out = []
        for kind, name in _defined(src):
            full = f'{own}.{name}'
            if name.split('.')[-1].startswith('_') or full not in self.names.get(full, []): continue
            directive = {'function': 'autofunction', 'class': 'autoclass', 'method': 'automethod'}[kind]
            out.append(f'```{{eval-rst}}\n.. {directive}:: {full}\n   :no-index:\n```')  # autodoc writes rST
        return '\n\n'.join(out) or None

    @staticmethod
    def _outputs(outputs: list) -> list:
        """Outputs as a static page can show them: a widget gets a note instead of a view that needs a kernel, and a figure
        shown twice (pyplot's inline display plus the cell's returned Figure) once."""
        res, seen = [], set()
        for o in outputs:
            data = o.get('data', {})
            if 'image/png' in data:
                png = ''.join(data['image/png'])
                if png in seen: continue
                seen.add(png)
            if WIDGET in data and not ({'image/png', 'text/html', 'image/svg+xml'} & data.keys()):
                what = re.match(r'\w*', ''.join(data.get('text/plain', ''))).group() or 'widget'
                html = (f'<div class="pk-widget-fallback"><p><b>Interactive widget</b> (<code>{_esc(what)}</code>): '
                        'its controls need a live kernel, which a static page has not; run this notebook in JupyterLab '
                        'to use it.</p></div>')
                o = {**o, 'data': {'text/html': html, 'text/plain': data.get('text/plain', '')}}
            elif WIDGET in data: o = {**o, 'data': {k: v for k, v in data.items() if k != WIDGET}}
            res.append(o)
        return res

    def notebook(self, rel: Path) -> dict:
        "The staged notebook of repo path `rel`, from its executed copy."
        nb = json.loads((EXECUTED/rel).read_text())
        r = rel.as_posix()
        own = self.nb_mod.get(r)
        base = '' if r == 'nbs/index.ipynb' else rel.parent.as_posix()  # the home page is staged at the root, as README.md
        cells, titled = [], False
        for c in nb['cells']:
            src = ''.join(c['source'])
            if c['cell_type'] == 'markdown':
                c = {**c, 'source': self.markdown(src, base, own), 'attachments': c.get('attachments', {})}
                if not c['attachments']: c.pop('attachments')
                cells.append(c)
                if not titled and re.match(r'^#\s', src.lstrip()):
                    titled = True
                    if own: cells.append(_md(f'API reference of this notebook\'s module: {{doc}}`{own} </api/{own}>` '
                                              '(every exported function, its parameters and their comments).'))
                continue
            if c['cell_type'] != 'code': continue
            dirs = {m[1]: m[2].strip() for l in src.splitlines() if (m := DIRECTIVE.match(l))}
            if {'hide', 'default_exp', 'exporti'} & dirs.keys(): continue
            code = '\n'.join(l for l in src.splitlines() if not DIRECTIVE.match(l)).strip('\n')
            if 'export' in dirs:
                if own and (api := self._api_cell(code, own)): cells.append(_md(api))
                continue
            if not code and not c.get('outputs'): continue
            cells.append({**c, 'source': code, 'outputs': self._outputs(c.get('outputs', []))})
        nb['cells'] = cells
        return nb


def _esc(s: str) -> str: return s.replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;')


def _md(src: str) -> dict:
    return {'cell_type': 'markdown', 'id': hashlib.sha1(src.encode()).hexdigest()[:8], 'metadata': {}, 'source': src}


def _write(p: Path, text: str) -> None:
    "Write only when the text changed (Sphinx rebuilds only the pages whose source is newer)."
    p.parent.mkdir(parents=True, exist_ok=True)
    if not p.is_file() or p.read_text() != text: p.write_text(text)


def _data_entries(mod: str) -> str:
    "rST entries for the exported constants and registries of `mod` (autodoc skips data without a doc comment)."
    import importlib
    m, out = importlib.import_module(mod), []
    for n in getattr(m, '__all__', []):
        v = getattr(m, n)
        if callable(v) or inspect.ismodule(v) or n in _documented(m): continue
        if isinstance(v, dict): desc = f'A registry of {len(v)}: ' + ', '.join(f'``{k!r}``' for k in list(v)[:40]) + (', ...' if len(v) > 40 else '') + '.'
        elif hasattr(v, 'shape') and hasattr(v, 'dtype'): desc = f'An array, shape ``{tuple(v.shape)}``, dtype ``{v.dtype}``.'
        else: desc = f'``{_short(" ".join(repr(v).split()))}``'
        out.append(f'\n.. py:data:: {n}\n   :module: {mod}\n\n   {desc}\n')
    return ''.join(out)


def _documented(m) -> set[str]:
    "Names of `m` that carry a `#:` doc comment (autodoc documents those itself)."
    try: src = inspect.getsource(m)
    except (OSError, TypeError): return set()
    return set(re.findall(r'^#:.*\n(\w+)\s*[:=]', src, re.M))


def _short(s: str, n: int = 100) -> str: return s if len(s) <= n else s[:n - 3] + '...'


def _toctree(caption: str, entries: list[str]) -> str:
    return '```{toctree}\n' + f':caption: {caption}\n:maxdepth: 1\n\n' + '\n'.join(entries) + '\n```\n'


def stage(pages: list[Path], src: Path) -> None:
    "Write Sphinx's sources: the staged notebooks, the section pages and one API page per module."
    mods = api_modules()
    cfg = tomllib.loads((ROOT/'pyproject.toml').read_text())
    st = Stager(pages, public_names(), mods, cfg['project']['urls']['Repository'])
    keep = set()
    for rel in pages:
        nb = st.notebook(rel)
        dest = Path('index.ipynb') if rel.as_posix() == 'nbs/index.ipynb' else rel
        if dest.name == 'index.ipynb':
            nb['cells'].append(_md('## Contents\n\n' + _toctree('Contents', ['tutorials', 'notebooks', 'api/index'])))
        _write(src/dest, json.dumps(nb, indent=1)); keep.add(dest.as_posix())
    tuts = [p.with_suffix('').as_posix() for p in pages if p.parent.name == 'tutorials']
    nbs = [p.with_suffix('').as_posix() for p in pages if p.parent.as_posix() == 'nbs' and p.name != 'index.ipynb']
    _write(src/'tutorials.md', '# Tutorials\n\nEnd-to-end walk-throughs; they export nothing.\n\n' + _toctree('Tutorials', tuts)); keep.add('tutorials.md')
    _write(src/'notebooks.md', '# Notebooks\n\nOne notebook per module, in the order of dependence: a notebook imports '
           'only from the ones before it.\n\n' + _toctree('Modules', nbs)); keep.add('notebooks.md')
    shown = [m for m, nb in mods.items() if nb in {p.as_posix() for p in pages}]
    _write(src/'api'/'index.md', '# API reference\n\nEvery exported function and class of `pneumokit`, with its signature, '
           'docstring and the comment of each parameter, module by module.\n\n' + _toctree('API', shown)); keep.add('api/index.md')
    for m in shown:
        nb = mods[m]
        title = m.replace('_', r'\_')  # pneumokit.__main__, not pneumokit.<b>main</b>
        _write(src/'api'/f'{m}.md', f'# {title}\n\nTaught, with examples, in the notebook {{doc}}`/{Path(nb).with_suffix("").as_posix()}`'
               f' (`{nb}`).\n\n```{{eval-rst}}\n.. automodule:: {m}\n   :members:\n   :undoc-members:\n   :member-order: bysource\n'
               + _data_entries(m) + '```\n')
        keep.add(f'api/{m}.md')
    for a in st.assets:
        (src/a).parent.mkdir(parents=True, exist_ok=True)
        if not (src/a).is_file() or (src/a).read_bytes() != (ROOT/a).read_bytes(): shutil.copy2(ROOT/a, src/a)
        keep.add(a)
    for f in src.rglob('*'):  # pages of notebooks no longer built (e.g. an earlier --only) would still be listed
        if f.is_file() and f.relative_to(src).as_posix() not in keep: f.unlink()


def build(out: Path, only: list[str] | None = None, execute: bool = True) -> Path:
    "Execute what is missing, stage, run Sphinx; returns the site's folder."
    pages = ladder()
    if only: pages = [p for p in pages if p.name == 'index.ipynb' or any(fnmatch.fnmatch(p.name, g) or fnmatch.fnmatch(str(p), g) for g in only)]
    execute_missing(pages, execute)
    kind = 'only' if only else 'all'
    src, html = STAGE/kind/'src', STAGE/kind/'html'  # myst-nb writes figures beside the output folder: keep it in build/
    stage(pages, src)
    cmd = [sys.executable, '-m', 'sphinx', '-b', 'html', '-q', '-c', str(CONF), '-d', str(STAGE/kind/'doctrees'), str(src), str(html)]
    r = subprocess.run(cmd, cwd=ROOT, env={**os.environ, 'PYTHONPATH': os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')]))})
    if r.returncode: raise DocsError(f'sphinx-build failed (exit {r.returncode}): see its messages above')
    if out.exists(): shutil.rmtree(out)
    shutil.copytree(html, out)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--out', default='_docs', help='folder of the site (default: _docs)')
    ap.add_argument('--only', nargs='*', help='build the home page and these notebooks only (file-name globs), for a quick look')
    ap.add_argument('--no-execute', action='store_true', help='fail instead of executing notebooks without a fresh executed copy')
    a = ap.parse_args(argv)
    try: out = build(ROOT/a.out, a.only, not a.no_execute)
    except DocsError as e:
        print(f'make docs: {e}', file=sys.stderr); return 1
    print(f'docs: site in {_show(out)}/index.html')
    return 0


if __name__ == '__main__': sys.exit(main())

"""`make test`'s notebook stage: `nbdev-test` on a fresh copy of the tracked files, as a new user's checkout.

Every notebook runs top to bottom in its own new shell; the copy holds only what git tracks (no `data/`, `reports/` or
caches left by `make demo` or earlier runs), and `PYTHONPATH` points `import pneumokit` at the copy's own library.
`--save-executed DIR` also keeps each notebook that passed, with its outputs, as DIR/<its path> (the documentation site
is built from them: `make docs` executes only the notebooks missing there or changed since). Each copy records the
SHA-256 of the notebook it ran (`metadata.pneumokit.source_sha256`), so a stale copy is never mistaken for a fresh one.
`--include-browser-nb` runs the browser test's tutorial here too (the docs build needs its outputs).
Usage: python tests/run_notebooks.py [--save-executed DIR] [--include-browser-nb] [extra nbdev-test arguments]"""
import hashlib, json, os, shutil, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSER_NB = 'nbs/tutorials/siim_end_to_end.ipynb'


def _browser_runs_tutorial() -> bool:
    "Whether `make test`'s pytest stage will run the tutorial in the browser (Chromium and Playwright present)."
    import importlib.util
    return shutil.which('chromium') is not None and importlib.util.find_spec('playwright') is not None


def source_sha(nb: Path) -> str:
    "The SHA-256 of a notebook file's bytes: what an executed copy records, and what the docs build compares."
    return hashlib.sha256(Path(nb).read_bytes()).hexdigest()


def _pop_option(argv: list[str], name: str) -> tuple[list[str], str | None]:
    "`argv` without `name VALUE` (or `name=VALUE`), and VALUE (None when absent)."
    rest, val, it = [], None, iter(argv)
    for a in it:
        if a == name:
            val = next(it, None)
            if val is None: sys.exit(f'run_notebooks.py: {name} needs a folder')
        elif a.startswith(name + '='): val = a.split('=', 1)[1]
        else: rest.append(a)
    return rest, val


def _save_executed(copy: Path, shas: dict[str, str], dest: Path) -> int:
    "Copy every notebook that nbdev-test rewrote (it saves only the ones that passed) to `dest`, tagged with its source's hash."
    n = 0
    for rel, sha in shas.items():
        if source_sha(copy/rel) == sha: continue  # not run, or failed: nbdev-test left it as it was
        nb = json.loads((copy/rel).read_text())
        nb.setdefault('metadata', {})['pneumokit'] = {'source_sha256': sha}
        out = dest/rel
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + '.tmp')
        tmp.write_text(json.dumps(nb, indent=1))
        tmp.replace(out)
        n += 1
    return n


def main(argv: list[str]) -> int:
    argv, save_to = _pop_option(argv, '--save-executed')
    include_browser_nb = '--include-browser-nb' in argv
    argv = [a for a in argv if a != '--include-browser-nb']
    files = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split('\0')
    with tempfile.TemporaryDirectory(prefix='pneumokit-nbtest-') as d:
        copy = Path(d)/'pneumokit'
        for f in filter(None, files):
            if (ROOT/f).is_file():
                (copy/f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT/f, copy/f)
        env = {**os.environ, 'PYTHONPATH': os.pathsep.join([str(copy), os.environ.get('PYTHONPATH', '')]).rstrip(os.pathsep)}
        real = ROOT.parent/'shared'/'data'/'siim'  # the copy is not beside ../shared: point at the real files explicitly
        if 'PNEUMOKIT_REAL_DATA' not in env and real.is_dir(): env['PNEUMOKIT_REAL_DATA'] = str(real)
        print(f'nbdev-test in a fresh copy of {len([f for f in files if f])} tracked files: {copy}', flush=True)
        if _browser_runs_tutorial() and not include_browser_nb:  # tests/test_browser.py runs it in JupyterLab from a fresh kernel: not twice
            print(f'{BROWSER_NB} is left to the browser test (Chromium and Playwright are installed)', flush=True)
            argv = [*argv, '--skip-file-glob', Path(BROWSER_NB).name]
        shas = {f: source_sha(copy/f) for f in files if f.startswith('nbs/') and f.endswith('.ipynb')} if save_to else {}
        rc = subprocess.run([str(Path(sys.executable).parent/'nbdev-test'), *argv, *(['--save'] if save_to else [])],
                            cwd=copy, env=env).returncode
        if save_to:
            n = _save_executed(copy, shas, ROOT/save_to)
            print(f'{n} executed notebook(s) saved under {save_to}', flush=True)
        return rc


if __name__ == '__main__': sys.exit(main(sys.argv[1:]))

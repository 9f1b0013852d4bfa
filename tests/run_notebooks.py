"""`make test`'s notebook stage: `nbdev-test` on a fresh copy of the tracked files, as a new user's checkout.

Every notebook runs top to bottom in its own new shell; the copy holds only what git tracks (no `data/`, `reports/` or
caches left by `make demo` or earlier runs), and `PYTHONPATH` points `import pneumokit` at the copy's own library.
Usage: python tests/run_notebooks.py [extra nbdev-test arguments]"""
import os, shutil, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BROWSER_NB = 'nbs/tutorials/siim_end_to_end.ipynb'


def _browser_runs_tutorial() -> bool:
    "Whether `make test`'s pytest stage will run the tutorial in the browser (Chromium and Playwright present)."
    import importlib.util
    return shutil.which('chromium') is not None and importlib.util.find_spec('playwright') is not None


def main(argv: list[str]) -> int:
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
        if _browser_runs_tutorial():  # tests/test_browser.py runs it in JupyterLab from a fresh kernel: not twice
            print(f'{BROWSER_NB} is left to the browser test (Chromium and Playwright are installed)', flush=True)
            argv = [*argv, '--skip-file-glob', Path(BROWSER_NB).name]
        return subprocess.run([str(Path(sys.executable).parent/'nbdev-test'), *argv], cwd=copy, env=env).returncode


if __name__ == '__main__': sys.exit(main(sys.argv[1:]))

"""Every notebook runs top to bottom in a fresh Jupyter kernel, in a temporary copy of the repo, as a new user's would
(GitHub issue #8): no state from earlier runs (no data/, caches, checkpoints or IPython profile), the copy's own package
on the path, a real ipykernel rather than nbdev-test's in-process shell.

`make test-fresh` runs it (not `make test`, whose notebook stage is nbdev-test on a fresh copy of the repo: running every
notebook twice would not fit the test budget). The cells are the ones nbdev-test runs (`nbdev.test.nb_test_cells`:
`tst_flags` such as `cuda`, `eval: false` and `skip_exec` are honoured), `$NB_WORKERS` kernels at a time. The notebook
the browser test drives (tests/test_browser.py) is left to it when it can run, since there it also runs from a fresh
kernel in a copy of the repo; `PNEUMOKIT_FRESH_ALL=1` runs it here too.
"""
import asyncio, json, os, re, sys, tempfile, time, warnings
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError

from browser.jlab import ROOT, copy_repo, kernel_env, tree_files

BROWSER_NB = os.environ.get('PNEUMOKIT_BROWSER_NB', 'nbs/tutorials/siim_end_to_end.ipynb')


def _notebooks() -> list[str]:
    "The notebooks nbdev-test would test (not in a folder holding a `.notest` file), as paths relative to the repo."
    from nbdev.config import get_config
    from nbdev.doclinks import nbglob
    files = set(tree_files())
    nbs = [Path(f).resolve() for f in nbglob(get_config(ROOT).nbs_path, as_path=True)]
    return sorted(p for f in nbs if not (f.parent/'.notest').exists() and (p := f.relative_to(ROOT).as_posix()) in files)


def _browser_runs(nb: str) -> bool:
    "Whether tests/test_browser.py will run `nb` (then it is not run twice)."
    from browser.lab_page import missing_browser
    return nb == BROWSER_NB and not os.environ.get('PNEUMOKIT_FRESH_ALL') and missing_browser() is None


NOTEBOOKS = _notebooks()


def _test_cells(fn: Path) -> nbformat.NotebookNode:
    "The notebook at `fn` reduced to the code cells nbdev-test would run, in order."
    from nbdev.config import get_config
    from nbdev.test import nb_test_cells
    flags = get_config(fn.parent).tst_flags
    with warnings.catch_warnings():
        warnings.filterwarnings('ignore', message='Failed to create YAML dict')  # nbdev reading a non-YAML cell as front matter
        cells = nb_test_cells(fn, flags.split() if isinstance(flags, str) else flags)
    meta = json.loads(fn.read_text())['metadata']
    return nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(c.source) for c in cells], metadata=meta)


async def _run(fn: Path, env: dict, timeout: int, sem: asyncio.Semaphore) -> dict:
    "Execute one notebook in its own fresh kernel, in its folder; returns what happened."
    async with sem:
        t0 = time.monotonic()
        nb = _test_cells(fn)
        client = NotebookClient(nb, timeout=timeout, startup_timeout=120, kernel_name='python3',
                                resources={'metadata': {'path': str(fn.parent)}})
        try:
            await client.async_execute(env=env)
            err = None
        except CellExecutionError as e: err = re.sub(r'\x1b\[[0-9;]*m', '', str(e))  # no terminal colours
        except (CellTimeoutError, DeadKernelError) as e: err = f'{type(e).__name__}: {e}'
        return dict(error=err, seconds=time.monotonic() - t0, cells=len(nb.cells))


async def _run_all(repo: Path, nbs: list[str], env: dict, n_workers: int, timeout: int) -> dict:
    sem = asyncio.Semaphore(n_workers)
    res = await asyncio.gather(*(_run(repo/nb, env, timeout, sem) for nb in nbs), return_exceptions=True)
    return {nb: r if isinstance(r, dict) else dict(error=f'{type(r).__name__}: {r}', seconds=0, cells=0)
            for nb, r in zip(nbs, res)}


@pytest.fixture(scope='module')
def fresh_runs(request):
    "Run the selected notebooks in a fresh copy of the repo, `$NB_WORKERS` at a time; {notebook: result}."
    from nbdev.config import get_config
    wanted = [it.callspec.params['nb'] for it in request.session.items
              if it.originalname == 'test_notebook_in_fresh_kernel' and 'nb' in getattr(it, 'callspec', {}).params]
    wanted = [nb for nb in dict.fromkeys(wanted) if not _browser_runs(nb)]
    with tempfile.TemporaryDirectory(prefix='pneumokit-fresh-') as tmp:
        repo = copy_repo(Path(tmp)/'repo')
        env = kernel_env(repo, Path(tmp)/'scratch')
        timeout = int(get_config(ROOT).cell_timeout or 600)
        t0 = time.monotonic()
        res = asyncio.run(_run_all(repo, wanted, env, int(os.environ.get('NB_WORKERS', 2)), timeout))
        total = time.monotonic() - t0
        lines = [f'{r["seconds"]:6.1f}s  {nb}' for nb, r in sorted(res.items(), key=lambda kv: -kv[1]['seconds'])]
        sys.stdout.write(f'\nfresh-kernel notebooks: {len(res)} in {total:.0f}s\n' + '\n'.join(lines) + '\n')
        yield res


@pytest.mark.parametrize('nb', NOTEBOOKS)
def test_notebook_in_fresh_kernel(nb, fresh_runs):
    if _browser_runs(nb): pytest.skip('run from a fresh kernel in JupyterLab by tests/test_browser.py')
    assert nb in fresh_runs, f'{nb} was not run: run this file without pytest-xdist (it runs $NB_WORKERS kernels itself)'
    r = fresh_runs[nb]
    assert r['error'] is None, f'{nb} failed in a fresh kernel ({r["seconds"]:.0f}s):\n{r["error"]}'

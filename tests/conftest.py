import os, subprocess, sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope='session')
def real_data():
    "The real SIIM files; skipped with a message when absent, an error on CI (find_real_data raises there)."
    from pneumokit.core import find_real_data
    p = find_real_data()
    if p is None: pytest.skip('real SIIM data not found (../shared/data/siim or $PNEUMOKIT_REAL_DATA)')
    return p


def run_cli(*args, cwd=None, check=True, env=None):
    "Run the installed `pneumokit` console script; returns the CompletedProcess."
    res = subprocess.run([str(BIN/'pneumokit'), *map(str, args)], capture_output=True, text=True, cwd=cwd,
                         env={**os.environ, **(env or {})}, timeout=900)
    if check and res.returncode != 0:
        raise AssertionError(f'pneumokit {args} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}')
    return res


def cli_run(name: str, *argv):
    "Run `pneumokit <name> argv...` in this process, parsed exactly as the console script parses it (no second torch start-up)."
    from pneumokit.cli import run_command
    return run_command(name, [str(a) for a in argv])


def cli_fails(name: str, *argv, needles=()) -> str:
    "The command must end as one line `pneumokit <name>: <reason>` holding every needle (a CliError, never a traceback)."
    from fastcore.script import CliError
    with pytest.raises(CliError) as e: cli_run(name, *argv)
    msg = str(e.value)
    assert len(msg.splitlines()) == 1 and msg.startswith(f'pneumokit {name}: '), msg
    for n in needles: assert n in msg, msg
    return msg


@pytest.fixture
def small_fs(tmp_path):
    "`make(options)`: a small tmpfs mounted under tmp_path (unmounted afterwards), for full and read-only disks; skipped with a message where mounting is not allowed (it needs root with CAP_SYS_ADMIN)."
    import shutil
    mounted = []
    def make(options: str) -> Path:
        d = tmp_path/f'fs{len(mounted)}'
        d.mkdir()
        if shutil.which('mount') is None: pytest.skip('no `mount` command: cannot make a small read-only or full disk')
        r = subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(d)], capture_output=True, text=True)
        if r.returncode: pytest.skip(f'cannot mount a small tmpfs here (needs root with CAP_SYS_ADMIN): {r.stderr.strip()}')
        mounted.append(d)
        return d
    yield make
    for d in reversed(mounted): subprocess.run(['umount', str(d)], check=False)

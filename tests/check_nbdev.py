"""CI gate: notebooks are clean, the library is in sync with them, and README.md is rendered from nbs/index.ipynb.

Runs `nbdev-clean` and `nbdev-export` on a scratch copy of the work tree (so a developer's files are never changed) and
fails, listing the files, when either command would change anything.
"""
import difflib, os, shutil, subprocess, sys, tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
sys.path.insert(0, str(ROOT/'tests'))
from render_readme import render_readme


def tree_files(root: Path) -> list[str]:
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split('\0') if f and (root/f).is_file()]


def snapshot(root: Path, dirs=('nbs', 'pneumokit')) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for d in dirs for p in sorted((root/d).rglob('*'))
            if p.is_file() and '__pycache__' not in p.parts and '.ipynb_checkpoints' not in p.parts}


def report(before: dict, after: dict, what: str) -> bool:
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    if not changed: return True
    print(f'FAIL: {what} changes {len(changed)} file(s):')
    for k in changed[:20]:
        print(f'  {k}')
        a = before.get(k, b'').decode(errors='replace').splitlines()
        b = after.get(k, b'').decode(errors='replace').splitlines()
        for line in list(difflib.unified_diff(a, b, lineterm='', n=1))[:12]: print('    ' + line[:160])
    return False


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for f in tree_files(ROOT):
            (tmp/f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT/f, tmp/f)
        env = {**os.environ, 'PATH': f'{BIN}:{os.environ["PATH"]}'}
        ok = True
        s0 = snapshot(tmp)
        subprocess.run([str(BIN/'nbdev-clean')], cwd=tmp, check=True, env=env)
        s1 = snapshot(tmp)
        ok &= report(s0, s1, '`nbdev-clean` (run it and commit the cleaned notebooks)')
        subprocess.run([str(BIN/'nbdev-export')], cwd=tmp, check=True, env=env)
        ok &= report(s1, snapshot(tmp), '`nbdev-export` (the library is out of sync with nbs/: run nbdev-export)')
        readme = (ROOT/'README.md').read_text() if (ROOT/'README.md').exists() else ''
        if readme != render_readme(ROOT/'nbs'/'index.ipynb'):
            print('FAIL: README.md is not the rendering of nbs/index.ipynb: run `make readme`'); ok = False
    print('nbdev checks: ' + ('notebooks clean, library in sync, README rendered' if ok else 'FAILED'))
    return 0 if ok else 1


if __name__ == '__main__': sys.exit(main())

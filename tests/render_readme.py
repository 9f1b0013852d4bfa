"""Render README.md from nbs/index.ipynb: markdown cells as they are, code cells as python blocks with their text
outputs; cells marked `#| hide` are left out. (nbdev-readme needs Quarto, which cannot be installed offline here.)"""
import json, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HEADER = '<!-- Generated from nbs/index.ipynb by `make readme`: edit the notebook, not this file. -->\n\n'


def _src(cell) -> str: return ''.join(cell['source'])


def _hidden(src: str) -> bool: return any(l.strip().startswith('#|') and 'hide' in l for l in src.splitlines())


def _outputs(cell) -> str:
    txt = []
    for o in cell.get('outputs', []):
        if o.get('output_type') == 'stream': txt.append(''.join(o['text']))
        elif 'text/plain' in o.get('data', {}): txt.append(''.join(o['data']['text/plain']))
    return ''.join(txt).rstrip()


def render_readme(nb_path: Path) -> str:
    parts = []
    for c in json.loads(Path(nb_path).read_text())['cells']:
        src = _src(c).strip('\n')
        if c['cell_type'] == 'markdown': parts.append(src)
        elif c['cell_type'] == 'code' and src and not _hidden(src):
            code = '\n'.join(l for l in src.splitlines() if not l.strip().startswith('#|'))
            parts.append(f'```python\n{code}\n```')
            if (out := _outputs(c)): parts.append(f'```\n{out}\n```')
    return HEADER + '\n\n'.join(parts) + '\n'


if __name__ == '__main__':
    text = render_readme(ROOT/'nbs'/'index.ipynb')
    if '--write' in sys.argv: (ROOT/'README.md').write_text(text)
    else: sys.stdout.write(text)

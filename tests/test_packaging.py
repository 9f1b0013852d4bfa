"""What the package claims about itself: no links to pages that do not exist, a license file that matches, extras that
install what the features ask for, and floors the tested environment meets."""
import ast, re, tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT/'pyproject.toml').read_text())


def test_no_links_in_module_docstrings():
    "No module advertises a documentation site (there is none): no URL and no `Docs:` line in any module docstring."
    bad = []
    for f in sorted((ROOT/'pneumokit').glob('*.py')):
        doc = ast.get_docstring(ast.parse(f.read_text())) or ''
        bad += [f'{f.name}: {m}' for m in re.findall(r'https?://\S+|^Docs:.*$', doc, re.M)]
    assert not bad, bad
    # nbdev writes `Docs:` lines from this URL on every export: it must stay out until a documentation site exists
    assert 'Documentation' not in PYPROJECT['project'].get('urls', {})
    assert 'github.io' not in (ROOT/'pneumokit'/'_modidx.py').read_text()


def test_license_file():
    assert PYPROJECT['project']['license'] == 'Apache-2.0'
    assert 'LICENSE' in PYPROJECT['project']['license-files']
    text = (ROOT/'LICENSE').read_text()
    assert text.split()[:4] == ['Apache', 'License', 'Version', '2.0,']
    for clause in ('1. Definitions.', '4. Redistribution.', '9. Accepting Warranty or Additional Liability.',
                   'END OF TERMS AND CONDITIONS'):
        assert clause in text, clause


def test_extras_and_floors():
    "The extras exist, `dev` pulls both (what `make test` installs), and this environment meets every stated floor."
    extras = PYPROJECT['project']['optional-dependencies']
    assert [Requirement(r).name for r in extras['wandb']] == ['wandb']
    assert {Requirement(r).name for r in extras['export']} == {'onnx', 'onnxscript', 'onnxruntime'}
    assert any(Requirement(r).name == 'pneumokit' and Requirement(r).extras == {'wandb', 'export'} for r in extras['dev'])
    reqs = [Requirement(r) for r in PYPROJECT['project']['dependencies'] + extras['wandb'] + extras['export']]
    reqs += [Requirement(r) for r in extras['dev'] if not r.startswith('pneumokit')]
    unmet = [f'{r} (installed {metadata.version(r.name)})' for r in reqs if not r.specifier.contains(metadata.version(r.name), prereleases=True)]
    assert not unmet, unmet


def test_floor_apis():
    "The API each raised floor is there for (a floor below it would install a release without it)."
    import inspect
    import fastcore.script, timm.models
    from nbdev.test import nbdev_test
    assert callable(fastcore.script.parse_cli)
    assert 'weights_only' in inspect.signature(timm.models.load_state_dict).parameters
    assert 'cell_timeout' in inspect.signature(nbdev_test).parameters
    import torch.export, torch.onnx
    assert callable(torch.export.Dim) and 'dynamo' in inspect.signature(torch.onnx.export).parameters
    import pydicom.pixels
    assert callable(pydicom.pixels.get_decoder) and callable(pydicom.pixels.apply_modality_lut)


def test_every_import_of_the_package_is_declared():
    "A clean install imports everything the modules import, including what fastai.medical.imaging pulls in (kornia, skimage)."
    import sys
    deps = {Requirement(r).name.lower() for r in PYPROJECT['project']['dependencies']}
    for mod in ('kornia', 'scikit-image'): assert mod in deps, f'{mod}: imported by fastai.medical.imaging, must be a dependency'
    stdlib = set(sys.stdlib_module_names)
    dist_of = {'cv2': 'opencv-python-headless', 'yaml': 'pyyaml', 'skimage': 'scikit-image', 'sklearn': 'scikit-learn',
               'segmentation_models_pytorch': 'segmentation-models-pytorch', 'PIL': 'pillow'}
    tops = set()
    for f in (ROOT/'pneumokit').glob('*.py'):
        for n in ast.walk(ast.parse(f.read_text())):
            if isinstance(n, ast.Import): tops |= {a.name.split('.')[0] for a in n.names}
            elif isinstance(n, ast.ImportFrom) and n.level == 0 and n.module: tops.add(n.module.split('.')[0])
    extras = {Requirement(r).name.lower() for v in PYPROJECT['project']['optional-dependencies'].values() for r in v}
    optional = {'IPython'}  # core.show_figures_inline: imported under `except ImportError`, a no-op outside IPython
    missing = sorted(t for t in tops - stdlib - optional - {'pneumokit', '__future__'}
                     if dist_of.get(t, t).lower().replace('_', '-') not in deps | extras)
    assert not missing, f'imported by pneumokit but not declared: {missing}'

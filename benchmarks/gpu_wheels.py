"""Gather, here, the wheels the GPU machine's image lacks, so `benchmarks/gpu_run.sh` can install them there offline.

The GPU machine (the `device` tool's `nvidia-h100-x1` / `nvidia-h200`) runs Python 3.12 with torch 2.11 (cu130), timm,
accelerate, OpenCV, pandas, scikit-learn, tensorboard... but no fastai, smp, albumentations, pydicom, nibabel or nbdev,
and nothing can be fetched there. This script walks pneumokit's requirements (and nbdev's, for the `#| cuda` cells)
through the distributions installed in the Python that runs it (the project's venv: the versions the tests passed
with), stops at every package the image already holds (`IMAGE`, from the tool library's KINDS.md, 2026-11-17) and at
what pneumokit never imports (`NOT_NEEDED`), and downloads one cp312 manylinux x86_64 wheel of each remaining package
(`pip download --no-deps --only-binary :all:`), never torch, into `.gpu-wheels/` (ignored by git). It prints the
wheels' size and the repository's: together they must stay under the 64 MiB that travel with a `run` call.

Run: `.venv/bin/python benchmarks/gpu_wheels.py [--dest .gpu-wheels]`   (`make gpu-wheels`)
"""
from __future__ import annotations
import argparse, re, subprocess, sys, tomllib
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
DEST = ROOT/'.gpu-wheels'
LIMIT_MIB = 64  # the working tree and carried files of one `run` call, together
MANIFEST = 'MANIFEST.txt'  # name==version per line: what gpu_run.sh checks it installed

# The 'cuda' image's Python packages (KINDS.md, "Python packages already there", read 2026-11-17).
IMAGE = set(map(canonicalize_name, """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax
fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis
idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash
yarl zipp""".split()))
# The versions KINDS.md's pip list gives for the image (the rest: whatever the index serves).
IMAGE_PINS = {'torch': '2.11.0', 'torchvision': '0.26.0', 'accelerate': '1.15.0', 'numpy': '2.5.2', 'safetensors': '0.8.0',
              'huggingface-hub': '1.33.0'}
# Required by a dependency's metadata but never imported on pneumokit's paths (spacy: fastai.text only, ~40 MB with its
# own needs); nvidia-*/torch are the image's. The fresh-venv test (tests/test_gpu_check.py) proves the set is enough.
NOT_NEEDED = set(map(canonicalize_name, ['spacy', 'opencv-python']))
# What the GPU check imports: pneumokit's own requirements, and nbdev (+ IPython's kernel pieces) for the `#| cuda` cells.
ROOTS = ['pneumokit', 'nbdev']
PLATFORMS = ['manylinux_2_28_x86_64', 'manylinux_2_27_x86_64', 'manylinux_2_24_x86_64', 'manylinux_2_17_x86_64',
             'manylinux2014_x86_64', 'manylinux1_x86_64']


def _requires(dist: metadata.Distribution, extras: set[str] = frozenset()) -> list[Requirement]:
    "The requirements of `dist` that apply on Linux, Python 3.12 (with `extras` switched on)."
    env = {**default_environment(), 'python_version': '3.12', 'python_full_version': '3.12.3', 'sys_platform': 'linux',
           'platform_system': 'Linux', 'platform_machine': 'x86_64'}
    out = []
    for r in map(Requirement, dist.requires or []):
        if r.marker is None or any(r.marker.evaluate({**env, 'extra': e}) for e in (extras or {''})): out.append(r)
    return out


def _project_requires() -> list[Requirement]:
    "pneumokit's own requirements, read from this checkout's pyproject.toml (torch and torchvision are the image's)."
    return [Requirement(r) for r in tomllib.loads((ROOT/'pyproject.toml').read_text())['project']['dependencies']]


def wheel_set(roots: list[str] = ROOTS) -> dict[str, str]:
    """Name -> requirement of every distribution the roots need that the image lacks: `==` the version installed here, or,
    in `specs`, what its dependents ask (the fallback when no cp312 wheel of that version exists)."""
    need, todo = {}, [(canonicalize_name(r), frozenset(), '') for r in roots]
    while todo:
        name, extras, spec = todo.pop()
        if name in IMAGE: REACHED.add(name)
        if name in IMAGE or name in NOT_NEEDED: continue
        SPECS.setdefault(name, set()).add(spec)
        try: dist = None if name == 'pneumokit' else metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sys.exit(f"gpu_wheels: {name} is required but not installed in {sys.executable}: run it with the project's venv")
        if name in need and not extras: continue
        if name != 'pneumokit': need[name] = dist.version
        reqs = _project_requires() if name == 'pneumokit' else _requires(dist, set(extras))
        todo += [(canonicalize_name(r.name), frozenset(r.extras), str(r.specifier)) for r in reqs]
    return dict(sorted(need.items()))


SPECS: dict[str, set[str]] = {}  # name -> the version specifiers its dependents wrote (filled by wheel_set)
REACHED: set[str] = set()  # the image's packages the roots need (filled by wheel_set)


def image_requirements() -> list[str]:
    "The image's packages pneumokit needs, pinned where KINDS.md gives the image's version: a stand-in for the image here."
    wheel_set()
    return [f'{n}=={IMAGE_PINS[n]}' if n in IMAGE_PINS else n for n in sorted(REACHED | set(IMAGE_PINS))]


def _pip_download(pins: dict[str, str], dest: Path) -> subprocess.CompletedProcess:
    plat = [a for p in PLATFORMS for a in ('--platform', p)]
    return subprocess.run([sys.executable, '-m', 'pip', 'download', '-q', '--no-deps', '--only-binary', ':all:',
                           '--python-version', '3.12', '--implementation', 'cp', '--abi', 'cp312', '--abi', 'abi3',
                           '--abi', 'none', *plat, '-d', str(dest), *[f'{k}{v}' for k, v in pins.items()]],
                          capture_output=True, text=True)


def download(need: dict[str, str], dest: Path) -> dict[str, Path]:
    """One cp312 manylinux x86_64 wheel per name into `dest`: the version installed here, else (no such wheel for
    Python 3.12) the newest its dependents accept. Wheels of other names or versions are removed."""
    dest.mkdir(parents=True, exist_ok=True)
    pins = {k: f'=={v}' for k, v in need.items()}
    for _ in range(len(pins) + 1):
        res = _pip_download(pins, dest)
        if not res.returncode: break
        bad = re.search(r'No matching distribution found for ([A-Za-z0-9_.-]+)==', res.stderr)
        name = bad and canonicalize_name(bad.group(1))
        if not name or name not in pins or not pins[name].startswith('=='):
            sys.exit(f"gpu_wheels: pip download failed:\n{res.stderr.strip()[-2000:]}")
        pins[name] = ','.join(sorted(s for s in SPECS.get(name, ()) if s))  # e.g. '>=2.1'; '' = the newest
        print(f"{name}=={need[name]}: no cp312 wheel; taking the newest with '{pins[name] or 'any version'}'")
    got = {}
    for w in sorted(dest.glob('*.whl'), key=lambda w: w.stat().st_mtime, reverse=True):
        name = canonicalize_name(w.name.split('-')[0])
        if name in pins and name not in got and (pins[name][2:] == w.name.split('-')[1] or not pins[name].startswith('==')):
            got[name] = w
        else: w.unlink()  # an older gathering's: two versions of one package stop `pip install`
    missing = set(pins) - set(got)
    if missing: sys.exit(f"gpu_wheels: no wheel saved for {sorted(missing)} in {dest}")
    (dest/MANIFEST).write_text(''.join(f"{k}=={got[k].name.split('-')[1]}\n" for k in sorted(got)))
    return got


def repo_bytes(root: Path = ROOT) -> int:
    "Bytes of what a `run` call sends: tracked files and untracked files git does not ignore."
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=root,
                           capture_output=True, text=True, check=True).stdout.split('\0')
    return sum((root/f).stat().st_size for f in files if f and (root/f).is_file())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--dest', type=Path, default=DEST, help='folder for the wheels (carried with the `run` call)')
    p.add_argument('--image-requirements', action='store_true',
                   help="print the image's packages pneumokit needs (a requirements file for a stand-in of the image) and stop")
    a = p.parse_args(argv)
    if a.image_requirements: print('\n'.join(image_requirements())); return 0
    need = wheel_set()
    wheels = list(download(need, a.dest).values())
    mib = lambda b: b / 2**20
    w, r = sum(f.stat().st_size for f in wheels), repo_bytes()
    print(f"{len(wheels)} wheels in {a.dest}: {mib(w):.1f} MiB; repository: {mib(r):.1f} MiB; "
          f"together {mib(w + r):.1f} MiB of the {LIMIT_MIB} MiB a run call carries")
    if mib(w + r) > LIMIT_MIB: print(f"gpu_wheels: {mib(w + r):.1f} MiB is over the {LIMIT_MIB} MiB limit", file=sys.stderr); return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())

"""A JupyterLab server for tests: a fresh copy of the repo as its root, a random token, its own process group, and a
stop that always runs and proves itself clean (no process of the server or its kernels left, the port free again)."""
from __future__ import annotations
import ctypes, json, os, secrets, shutil, signal, socket, subprocess, sys, tempfile, threading, time, urllib.error
import urllib.request, warnings
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def tree_files(root: Path = ROOT) -> list[str]:
    "The repo's files as a fresh clone would have them (tracked, plus new files git does not ignore)."
    out = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'], cwd=root,
                         capture_output=True, check=True).stdout.decode()
    return [f for f in out.split('\0') if f and (root/f).is_file()]


def copy_repo(dest: Path, root: Path = ROOT) -> Path:
    "Copy the repo's files into `dest` (no data, caches, venv or notebook checkpoints: nothing from earlier runs)."
    for f in tree_files(root):
        (dest/f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root/f, dest/f)
    return dest


def kernel_env(repo: Path, scratch: Path) -> dict[str, str]:
    "Environment for a server or kernel on the copy `repo`: its own package, fresh Jupyter/IPython state, one thread."
    from pneumokit.core import find_real_data
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        real = find_real_data(required=False)  # found from the real checkout; the copy lives elsewhere
    env = {k: v for k, v in os.environ.items() if not k.startswith(('JUPYTER', 'IPYTHON', 'JPY_'))}
    for d in ('runtime', 'config', 'data', 'lab-settings', 'workspaces', 'ipython'): (scratch/d).mkdir(parents=True, exist_ok=True)
    env.update(PYTHONPATH=str(repo), OMP_NUM_THREADS='1', PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
               JUPYTER_RUNTIME_DIR=str(scratch/'runtime'), JUPYTER_CONFIG_DIR=str(scratch/'config'),
               JUPYTER_DATA_DIR=str(scratch/'data'), JUPYTERLAB_SETTINGS_DIR=str(scratch/'lab-settings'),
               JUPYTERLAB_WORKSPACES_DIR=str(scratch/'workspaces'), IPYTHONDIR=str(scratch/'ipython'),
               PYDEVD_DISABLE_FILE_VALIDATION='1')
    if real is not None: env['PNEUMOKIT_REAL_DATA'] = str(real)
    _quiet_lab(scratch/'lab-settings')
    return env


def _quiet_lab(settings: Path):
    "User settings of a fresh JupyterLab without the news and update prompts (toasts over the outputs)."
    f = settings/'@jupyterlab'/'apputils-extension'/'notification.jupyterlab-settings'
    f.parent.mkdir(parents=True, exist_ok=True)
    f.write_text(json.dumps({'fetchNews': 'false', 'checkForUpdates': False}))


def port_in_use(port: int, host: str = '127.0.0.1') -> bool:
    "Whether something listens on `port` (a bind with SO_REUSEADDR only fails on a listening socket)."
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try: s.bind((host, port))
        except OSError: return True
    return False


class JupyterLab:
    "`with JupyterLab(root) as lab:` a token-protected JupyterLab on 127.0.0.1 serving `root`, stopped on exit whatever happens."
    def __init__(self, root: Path, env: dict[str, str] | None = None, start_timeout: float = 90):
        self.root, self.start_timeout = Path(root), start_timeout
        self.scratch = Path(tempfile.mkdtemp(prefix='pneumokit-lab-'))
        self.env = env or kernel_env(self.root, self.scratch)
        self.token, self.port, self.proc, self.stopped = secrets.token_hex(24), None, None, None
        self.log_path = self.scratch/'server.log'

    def __enter__(self):
        try: self.start()
        except BaseException: self.stop(); raise
        return self

    def __exit__(self, *exc):
        report = self.stop()
        if exc[0] is None and not report['clean']: raise AssertionError(f'JupyterLab did not stop cleanly: {report}')

    @property
    def url(self) -> str: return f'http://127.0.0.1:{self.port}'

    def start(self):
        "Start the server in its own session (process group) and wait until `/api/status` answers."
        args = [str(BIN/'jupyter'), 'lab', '--no-browser', '--allow-root', '--port=0', '--ServerApp.port_retries=0',
                '--ServerApp.ip=127.0.0.1', f'--IdentityProvider.token={self.token}', f'--ServerApp.root_dir={self.root}',
                '--LabApp.news_url=None', '--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate',
                '--LabApp.expose_app_in_browser=True']
        self.log = open(self.log_path, 'wb')
        self._trap_sigterm()
        self.proc = subprocess.Popen(args, cwd=self.root, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None: raise RuntimeError(f'JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}')
            if self.port is None: self.port = self._port_from_runtime()
            if self.port is not None:
                try:
                    if self.api('GET', '/api/status').get('started'): return self
                except (urllib.error.URLError, ConnectionError, TimeoutError): pass
            time.sleep(0.3)
        raise TimeoutError(f'JupyterLab did not answer within {self.start_timeout}s:\n{self.log_tail()}')

    def _trap_sigterm(self):
        "Turn a SIGTERM of the test run (a CI timeout) into SystemExit, so that `stop` still runs."
        self._old_term = None
        if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
            self._old_term = signal.signal(signal.SIGTERM, _raise_exit)

    def _port_from_runtime(self) -> int | None:
        "The port the server bound (`--port=0` lets the OS pick a free one; the server writes it to its runtime file)."
        f = Path(self.env['JUPYTER_RUNTIME_DIR'])/f'jpserver-{self.proc.pid}.json'
        try: return int(json.loads(f.read_text())['port'])
        except (OSError, ValueError, KeyError): return None

    def api(self, method: str, path: str, body: dict | None = None, timeout: float = 10):
        "Call the server's REST API with the token; returns the decoded JSON (or None when empty)."
        req = urllib.request.Request(self.url + path, method=method, headers={'Authorization': f'token {self.token}'},
                                     data=None if body is None else json.dumps(body).encode())
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
        return json.loads(data) if data else None

    def log_tail(self, n: int = 4000) -> str:
        try: return self.log_path.read_bytes()[-n:].decode(errors='replace')
        except OSError: return ''

    def processes(self) -> list[psutil.Process]:
        "The server and every process under it (kernels run in their own sessions, so a group kill would miss them)."
        try:
            p = psutil.Process(self.proc.pid)
            return [p, *p.children(recursive=True)]
        except psutil.NoSuchProcess: return []

    def stop(self, timeout: float = 30) -> dict:
        "Shut the server down (REST, then SIGTERM, then SIGKILL), kill what it left behind, and report what was found."
        if self.stopped is not None: return self.stopped
        if self.proc is None: self.stopped = dict(clean=True, orphans=[], port_in_use=False); return self.stopped
        procs = self.processes()
        if self.proc.poll() is None and self.port is not None:
            try: self.api('POST', '/api/shutdown', timeout=5)  # the server shuts its kernels down itself
            except Exception: pass
        forced = not self._wait(timeout)
        if forced:
            self._signal_group(signal.SIGTERM)
            if not self._wait(10): self._signal_group(signal.SIGKILL); self._wait(10)
        _, alive = psutil.wait_procs([p for p in procs if p.pid != self.proc.pid], timeout=10)
        orphans = [f'{p.pid} {_cmdline(p)}' for p in alive]
        for p in alive:
            try: p.kill()
            except psutil.NoSuchProcess: pass
        self._signal_group(signal.SIGKILL)  # anything else still in the server's group
        self.log.close()
        busy = self.port is not None and _wait_port_free(self.port)
        self.stopped = dict(clean=not (forced or orphans or busy), forced=forced, orphans=orphans, port_in_use=busy,
                            returncode=self.proc.returncode)
        if self.stopped['clean']: shutil.rmtree(self.scratch, ignore_errors=True)
        if getattr(self, '_old_term', None) is not None: signal.signal(signal.SIGTERM, self._old_term)
        return self.stopped

    def _wait(self, timeout: float) -> bool:
        try: self.proc.wait(timeout=timeout); return True
        except subprocess.TimeoutExpired: return False

    def _signal_group(self, sig):
        try: os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError): pass


def _raise_exit(signum, frame): raise SystemExit(128 + signum)


def _die_with_parent():
    "In the server's process: get SIGTERM when the test process dies, even by SIGKILL (Linux; elsewhere a no-op)."
    try: ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError): pass


def _cmdline(p: psutil.Process) -> str:
    try: return ' '.join(p.cmdline())[:200]
    except psutil.Error: return '?'


def _wait_port_free(port: int, timeout: float = 5) -> bool:
    "True when `port` is still listened on after `timeout` seconds."
    deadline = time.monotonic() + timeout
    while port_in_use(port):
        if time.monotonic() > deadline: return True
        time.sleep(0.1)
    return False

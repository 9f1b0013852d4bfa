"""CPU seconds of the `pneumokit` commands a person waits on: `--help`, `train --help` and a missing path, beside
`python -c pass` (the interpreter alone) and `python -c 'import torch'` (what every command paid before it could answer),
measured in the same run: the median of --repeats runs of each, as the user + system CPU time of the child process
(`resource.getrusage(RUSAGE_CHILDREN)`), which a busy machine inflates less than wall time (wall medians are printed too).

Run: .venv/bin/python benchmarks/bench_cli.py [--repeats 7]
"""
import argparse, os, resource, statistics, subprocess, sys, time
from pathlib import Path

PY = sys.executable
SCRIPT = Path(PY).parent/'pneumokit'
CLI = [str(SCRIPT)] if SCRIPT.exists() else [PY, '-m', 'pneumokit']


def cpu_wall(cmd: list[str]) -> tuple[float, float, int]:
    "CPU seconds (user + system) and wall seconds of one run of `cmd`, and its exit status."
    before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    rc = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, 'OMP_NUM_THREADS': '1'}).returncode
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, wall, rc


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--repeats', type=int, default=7)
    a = ap.parse_args()
    cases = {'python -c pass': [PY, '-c', 'pass'],
             "python -c 'import torch'": [PY, '-c', 'import torch'],
             'pneumokit --help': [*CLI, '--help'],
             'pneumokit train --help': [*CLI, 'train', '--help'],
             'pneumokit search /no/such/run': [*CLI, 'search', '/no/such/run']}
    print(f"load average before: {os.getloadavg()}; {a.repeats} runs of each, interleaved; CLI: {' '.join(CLI)}")
    runs = {k: [] for k in cases}
    for _ in range(a.repeats):
        for k, cmd in cases.items(): runs[k].append(cpu_wall(cmd))
    torch_cpu = statistics.median(c for c, _, _ in runs["python -c 'import torch'"])
    print(f"{'command':32s} {'CPU s (median)':>15s} {'wall s (median)':>16s} {'exit':>5s} {'CPU / import torch':>19s}")
    for k, rs in runs.items():
        cpu, wall = statistics.median(c for c, _, _ in rs), statistics.median(w for _, w, _ in rs)
        print(f"{k:32s} {cpu:15.3f} {wall:16.3f} {rs[0][2]:5d} {cpu / torch_cpu:18.2f}x")
    print(f"load average after: {os.getloadavg()}")


if __name__ == '__main__': main()

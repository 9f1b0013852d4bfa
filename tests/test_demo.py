"""`pneumokit demo` (what `make demo` runs) from nothing to a validated submission and a report folder, and a second
run that reuses what the first one made. The demo's own config trains for minutes; this test names a smoke config."""
import json

import pandas as pd

from conftest import run_cli


def test_demo(tmp_path):
    args = ['demo', '--data', tmp_path/'mini', '--report', tmp_path/'report', '--config', 'siim-1st-place.cpu-smoke',
            '--n-train', 100, '--n-test', 8, '--size', 256, '--workers', 0]
    out = run_cli(*args, env={'OMP_NUM_THREADS': '1'}).stdout
    rep, run = tmp_path/'report', tmp_path/'mini-run'
    for f in ['report.md', 'audit.csv', 'submission.csv', 'search.png', 'gallery.png', 'curves_fold0.png', 'curves_fold1.png']:
        assert (rep/f).exists(), f
    assert len(list((rep/'figures').glob('*.png'))) >= 4
    assert str(rep/'report.md') in out and str(tmp_path/'mini') in out  # says where everything went
    best = json.loads((run/'thresholds.json').read_text())
    assert best['folds'] == [0, 1]  # the config's two folds
    text = (rep/'report.md').read_text()
    assert f"**{best['dice']:.4f}**" in text and f"{best['all_empty']:.4f}" in text  # the metric beside the baseline
    assert 'submission vs the synthetic test truth' in text
    sub = pd.read_csv(rep/'submission.csv')
    assert sorted(sub.ImageId) == sorted(pd.read_csv(tmp_path/'mini'/'sample_submission.csv').ImageId)
    hist = (run/'fold0'/'history.csv').read_text()
    ckpts = {p.name: p.stat().st_mtime_ns for p in (run/'fold0').glob('model_*.pth')}
    out2 = run_cli(*args, env={'OMP_NUM_THREADS': '1'}).stdout
    assert 'reusing the synthetic set' in out2
    assert (run/'fold0'/'history.csv').read_text() == hist  # finished folds are not retrained
    assert {p.name: p.stat().st_mtime_ns for p in (run/'fold0').glob('model_*.pth')} == ckpts

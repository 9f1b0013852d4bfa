"""`pneumokit demo` (what `make demo` runs) from nothing to a validated submission and a report folder, its output a pipe
(one line per step, no progress bar), and a second run that reuses what the first one made. The demo's own config trains
for minutes; this test names a smoke config. The first run is the session's shared smoke run (`conftest.smoke_demo`)."""
import json, shutil

import pandas as pd

from conftest import DEMO_ARGS, SMOKE, run_cli


def test_demo(smoke_demo, tmp_path):
    d = smoke_demo
    out = (d/'demo.log').read_text()
    rep, run = d/'report', d/'mini-run'
    for f in ['report.md', 'audit.csv', 'submission.csv', 'search.png', 'gallery.png', 'curves_fold0.png', 'curves_fold1.png']:
        assert (rep/f).exists(), f
    assert len(list((rep/'figures').glob('*.png'))) >= 4
    assert str(rep/'report.md') in out and str(d/'mini') in out  # says where everything went
    best = json.loads((run/'thresholds.json').read_text())
    assert best['folds'] == [0, 1]  # the config's two folds
    text = (rep/'report.md').read_text()
    assert f"**{best['dice']:.4f}**" in text and f"{best['all_empty']:.4f}" in text  # the metric beside the baseline
    assert 'submission vs the synthetic test truth' in text
    sub = pd.read_csv(rep/'submission.csv')
    assert sorted(sub.ImageId) == sorted(pd.read_csv(d/'mini'/'sample_submission.csv').ImageId)


def test_demo_log_has_no_progress_bars(smoke_demo):
    "Its output is a pipe: every step writes lines, none redraws a bar (no carriage return, no bar glyph)."
    out = (smoke_demo/'demo.log').read_text()
    assert 'epoch 1/' in out and 'pneumokit demo:' in out  # the training's lines and the summary are there
    bad = [c for c in ('\r', '█', '|--', '━') if c in out]
    assert not bad, (bad, out[:2000])


def test_demo_again_reuses_everything(smoke_demo, tmp_path):
    "A second run, on a copy (the shared run stays as it is): the set is reused, the finished folds are not retrained."
    d = shutil.copytree(smoke_demo, tmp_path/'d', ignore=shutil.ignore_patterns('.built'))  # copies keep the files' times
    run = d/'mini-run'
    hist = (run/'fold0'/'history.csv').read_text()
    ckpts = {p.name: p.stat().st_mtime_ns for p in (run/'fold0').glob('model_*.pth')}
    out2 = run_cli('demo', '--data', d/'mini', '--report', d/'report', '--config', SMOKE, *DEMO_ARGS,
                   env={'OMP_NUM_THREADS': '1'}).stdout
    assert 'reusing the synthetic set' in out2
    assert (run/'fold0'/'history.csv').read_text() == hist  # finished folds are not retrained
    assert {p.name: p.stat().st_mtime_ns for p in (run/'fold0').glob('model_*.pth')} == ckpts

"""`pneumokit demo` (what `make demo` runs) from nothing to a report folder, and a second run that resumes."""
from conftest import run_cli


def test_demo(tmp_path):
    args = ['demo', '--data', tmp_path/'mini', '--report', tmp_path/'report', '--n-train', 40, '--n-test', 8,
            '--size', 512, '--sizes', '128,256']
    out = run_cli(*args).stdout
    rep = tmp_path/'report'
    for f in ['report.md', 'metadata.csv', 'audit.csv']: assert (rep/f).exists(), f
    assert len(list((rep/'figures').glob('*.png'))) >= 4
    assert str(rep/'report.md') in out and str(tmp_path/'mini') in out  # says where everything went
    text = (rep/'report.md').read_text()
    assert 'No findings' in text and 'positive_rate' in text
    for size in (128, 256):
        assert len(list((tmp_path/'mini-cache'/'train'/str(size)/'images').glob('*.png'))) == 40
        assert len(list((tmp_path/'mini-cache'/'test'/str(size)/'images').glob('*.png'))) == 8
    out2 = run_cli(*args).stdout
    assert 'reusing the synthetic set' in out2

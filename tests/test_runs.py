"""`pneumokit runs DIR...`: one row per run, read through the run folder's owners, printed within the terminal's width
and written whole as CSV; bad folders are one line."""
import pandas as pd

from conftest import cli_fails, cli_run


def test_runs_compares_runs_in_the_terminal_and_a_csv(grown_run, tmp_path, capsys, monkeypatch):
    from pneumokit import pipeline
    from pneumokit.layout import RunDir
    run = RunDir(grown_run.run)
    import shutil
    one = RunDir(tmp_path/'runs'/'one-fold')  # a second, unfinished run: fold 0 of the two planned, not searched (copied:
    one.root.mkdir(parents=True)             # the session trains each config's fold once, see conftest)
    for f in (run.config, run.info): shutil.copy(f, one.root/f.name)
    shutil.copytree(run.fold(0).root, one.fold(0).root)
    pd.read_csv(run.summary).query('fold == 0').to_csv(one.summary, index=False)
    monkeypatch.setenv('COLUMNS', '80')
    capsys.readouterr()  # training's own lines
    df = cli_run('runs', run.root, tmp_path/'runs', '--csv', tmp_path/'runs.csv')
    out = capsys.readouterr().out.splitlines()
    assert max(map(len, out[:-1])) <= 80, out  # the table and its note (the last line names the CSV)
    assert not out[0].startswith('kind')  # only runs: no column saying so
    assert sum(l.rstrip().startswith('…') or 'grown' in l or 'one-fold' in l for l in out) >= 2, out  # a line per run
    assert 'one-fold' in '\n'.join(out)
    assert out[-1] == f"table of 2 run(s) -> {tmp_path/'runs.csv'}"
    csv = pd.read_csv(tmp_path/'runs.csv', keep_default_na=False)
    assert csv.run.tolist() == [str(run.root), str(tmp_path/'runs'/'one-fold')] == df.run.tolist()
    assert csv.folds.tolist() == ['2/2', '1/2'] and set(csv.config) == {'grow-test'}
    summary = pd.read_csv(run.summary)
    for k in (0, 1): assert abs(df[f'dice_f{k}'][0] - summary.oof_dice[k]) < 1e-9  # each fold as its trainer measured it
    n = summary.n_valid
    assert abs(df.oof_dice[0] - (summary.oof_dice * n).sum() / n.sum()) < 1e-9
    best = run.read_thresholds()
    assert abs(df.rule_dice[0] - best['dice']) < 1e-12 and df.rule[0].startswith('triplet: ')
    assert df.rule[1] == '' and pd.isna(df.dice_f1[1])  # not searched; fold 1 not trained
    assert (df.epochs == 1).all() and (df.wall_s > 0).all()


def test_runs_bad_folders_are_one_line(tmp_path):
    cli_fails('runs', needles=['give at least one run folder'])
    cli_fails('runs', tmp_path/'nope', needles=[f"run folder not found: {tmp_path/'nope'}"])
    cli_fails('runs', tmp_path, needles=[f'{tmp_path} is not a run folder', 'holds none'])

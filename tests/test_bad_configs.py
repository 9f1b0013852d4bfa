"""Issue 15, "one check of configs", devices, destinations and checkpoints: each bad input is one line naming the file,
key or argument, found before anything is written. Disk cases use a small read-only or full tmpfs made here, and are
skipped with a message where this user may not mount one (it needs root with CAP_SYS_ADMIN)."""
import contextlib, shutil, subprocess

import numpy as np
import pytest
import torch
from fastcore.script import CliError

from pneumokit.cli import run_command
from pneumokit.config import load_config
from pneumokit.core import WriteError, atomic_write, check_dest, get_device, write_bytes_atomic
from pneumokit.models import build_model, load_weights, read_checkpoint, read_state_dict


def _cli_error(name, argv) -> str:
    "The one-line reason `run_command` gives for a bad input."
    with pytest.raises(CliError) as e: run_command(name, [str(a) for a in argv])
    msg = str(e.value)
    assert '\n' not in msg and msg.startswith(f'pneumokit {name}: '), msg
    return msg


def _train_bad(tmp_path, yaml_text):
    "`pneumokit train` on a config with a bad nested key: its message, and the run folder must not exist."
    cfg = tmp_path/'bad.yaml'
    cfg.write_text(yaml_text)
    msg = _cli_error('train', [cfg, tmp_path, tmp_path, tmp_path/'run'])
    assert not (tmp_path/'run').exists(), 'the run folder was written before the config was checked'
    return msg


def test_model_kwargs_typo_fails_at_load(tmp_path):
    msg = _train_bad(tmp_path, 'base: demo\nmodel: {kwargs: {decoder_channelz: [64, 32, 16, 8, 8]}}\n')
    assert 'bad.yaml: unknown key `model.kwargs.decoder_channelz` for Unet; valid keys:' in msg and 'decoder_channels' in msg


def test_model_kwargs_that_smp_rejects(tmp_path):
    msg = _train_bad(tmp_path, 'base: demo\nmodel: {kwargs: {decoder_channels: [16, 8]}}\n')
    assert 'bad.yaml: `model.kwargs`:' in msg


def test_loss_kwargs_unknown_key_fails_at_load(tmp_path):
    msg = _train_bad(tmp_path, 'base: demo\nstages:\n  - {size: 128, loss: focal, loss_kwargs: {gama: 2}}\n')
    assert "bad.yaml: unknown key `stages[0].loss_kwargs.gama` for the binary loss 'focal'; valid keys: gamma, alpha" in msg


def test_loss_kwargs_bad_value_fails_at_load(tmp_path):
    msg = _train_bad(tmp_path, 'base: demo\nstages:\n  - {size: 128, loss: combo, loss_kwargs: {weights: {bce: -1}}}\n')
    assert 'bad.yaml: `stages[0].loss_kwargs`:' in msg


def test_missing_weights_file_fails_at_load(tmp_path):
    msg = _train_bad(tmp_path, f"base: demo\nmodel: {{weights: {tmp_path/'resnet34.pth'}}}\n")
    assert f"bad.yaml: `model.weights`: Weights file not found: {tmp_path/'resnet34.pth'}" in msg


def test_shipped_configs_still_load():
    from pneumokit.config import list_configs
    for n in list_configs(): load_config(n)


def test_devices():
    with pytest.raises(ValueError, match=r"`device` 'banana' is not a device name; available here: cpu"): get_device('banana')
    n = torch.cuda.device_count()
    with pytest.raises(ValueError, match=rf"`device` 'cuda:{n}' is not available on this machine; available here: cpu"):
        get_device(f'cuda:{n}')
    if n == 0:
        with pytest.raises(ValueError, match="`device` 'cuda:3' is not available"): get_device('cuda:3')
    else: assert get_device(f'cuda:{n - 1}') == torch.device('cuda', n - 1)
    assert get_device('cpu') == torch.device('cpu')


def test_garbage_checkpoints(tmp_path):
    good = tmp_path/'good.pth'
    torch.save(build_model('Unet', 'resnet18').state_dict(), good)
    data = good.read_bytes()
    for name, content in {'cut.pth': data[:len(data) // 3], 'text.pth': b'hello\n', 'noise.pth': bytes(range(256)) * 8,
                          'noise.safetensors': bytes(range(256)) * 8}.items():
        f = tmp_path/name
        f.write_bytes(content)
        for read in (read_checkpoint, read_state_dict, lambda p: load_weights(build_model('Unet', 'resnet18'), p),
                     lambda p: build_model('Unet', 'resnet18', weights=p)):
            with pytest.raises(ValueError, match='cannot be read as a') as e: read(f)
            assert str(f) in str(e.value)
    assert set(read_state_dict(good)) == set(build_model('Unet', 'resnet18').state_dict())


# --- destinations: a folder in the way, a read-only folder, a full disk ---------------------------------------------

def test_destination_is_a_folder(tmp_path):
    (tmp_path/'sub.csv').mkdir()
    with pytest.raises(ValueError, match='is a folder, expected a file name'): check_dest(tmp_path/'sub.csv', 'submission')
    with pytest.raises(WriteError, match='Is a directory'): write_bytes_atomic(tmp_path/'sub.csv', b'x')


def _read_only_folder(tmp_path, small_fs):
    "A folder this user cannot write: permissions first (they do not stop root), else a read-only tmpfs."
    ro = tmp_path/'ro'
    ro.mkdir(); ro.chmod(0o555)
    try: (ro/'probe').touch()
    except PermissionError: return ro
    (ro/'probe').unlink(); ro.chmod(0o755)
    return small_fs('ro,size=64k')


def test_read_only_destination(tmp_path, small_fs):
    ro = _read_only_folder(tmp_path, small_fs)
    try:
        with pytest.raises(ValueError, match=f"submission '{ro/'sub.csv'}': the folder '{ro}' is not writable"):
            check_dest(ro/'sub.csv', 'submission')
        with pytest.raises(ValueError, match=r"PNG cache '.*cache': (cannot create the folder|the folder .* is not writable)"):
            check_dest(ro/'cache', 'PNG cache', folder=True)
        with pytest.raises(WriteError, match=f"cannot write '{ro/'a.npy'}'"): write_bytes_atomic(ro/'a.npy', b'x')
    finally:
        with contextlib.suppress(OSError): ro.chmod(0o755)  # let pytest remove it (a read-only mount refuses: no matter)


def test_full_destination(tmp_path, small_fs):
    full = small_fs('size=64k')
    with pytest.raises(ValueError, match=f"maps '{full/'m.npy'}': needs 200.0 kB"): check_dest(full/'m.npy', 'maps', size=200_000)
    with pytest.raises(WriteError, match=f"cannot write '{full/'a.bin'}': No space left on device") as e:
        write_bytes_atomic(full/'a.bin', b'x' * 200_000)
    assert isinstance(e.value, ValueError) and e.value.errno == 28
    with pytest.raises(WriteError, match='the disk is full'):  # numpy says only "200000 requested and 8176 written"
        with atomic_write(full/'a.npy') as f: np.save(f, np.zeros(25_000))
    with pytest.raises(WriteError, match='the disk is full'):  # torch.save says only "unexpected pos"
        with atomic_write(full/'m.pth') as f: torch.save({'w': torch.zeros(25_000)}, f)
    assert list(full.iterdir()) == [], 'a failed write left a file behind'


def test_size_check_without_mounting(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(ValueError, match='needs'): check_dest(tmp_path/'m.npy', 'maps', size=free + 1)
    assert check_dest(tmp_path/'m.npy', 'maps', size=1) == tmp_path/'m.npy'


@pytest.mark.parametrize('build, yaml_text, msg', [
    (lambda: __import__('pneumokit.recipe').recipe.Recipe([{}], arch='Unett'), 'base: demo\nmodel: {arch: Unett}\n',
     "`model.arch`: Unknown architecture 'Unett'; valid: Unet"),
    (lambda: __import__('pneumokit.recipe').recipe.Stage(sched='nope'), 'base: demo\nstages:\n  - {size: 64, sched: nope}\n',
     "`sched` is 'nope'; valid: one_cycle, cosine"),
    (lambda: __import__('pneumokit.config').config.InferenceConfig(tta='nope'), 'base: demo\ninference: {tta: nope}\n',
     "`inference.tta` is 'nope'; valid: none, hflip"),
])
def test_definitions_fail_where_built_with_the_yaml_message(tmp_path, build, yaml_text, msg):
    "Issue 19: a recipe, a stage and inference settings check themselves when built, from Python or YAML, with one message."
    with pytest.raises(ValueError) as e: build()
    assert msg in str(e.value), str(e.value)
    cfg = tmp_path/'bad.yaml'
    cfg.write_text(yaml_text)
    with pytest.raises(ValueError) as y: load_config(cfg)
    assert str(y.value).startswith(f'{cfg}: ') and msg in str(y.value), str(y.value)
    assert str(e.value) in str(y.value)  # the same message, the file in front (a stage's adds its index)

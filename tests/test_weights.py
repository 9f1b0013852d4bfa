"""Every timm family of `TIMM_FAMILIES` loads a local weights file as a `tu-` encoder, with the hub out of reach."""
import os

import pytest
import torch

os.environ.setdefault('HF_HUB_OFFLINE', '1')


def _no_hub(*args, **kwargs): raise AssertionError(f'hub access attempted: {args[:2]}')


@pytest.fixture
def offline(monkeypatch):
    "HF_HUB_OFFLINE=1 and every download function timm and smp could call replaced by one that fails the test."
    import segmentation_models_pytorch.encoders as smp_enc
    import timm.models._builder as tb
    monkeypatch.setenv('HF_HUB_OFFLINE', '1')
    for name in ('load_state_dict_from_hf', 'load_state_dict_from_url', 'download_cached_file', 'load_custom_from_hf'):
        monkeypatch.setattr(tb, name, _no_hub)
    monkeypatch.setattr(smp_enc, 'hf_hub_download', _no_hub)


@pytest.mark.parametrize('family', sorted(__import__('pneumokit.models', fromlist=['x']).TIMM_FAMILIES))
def test_tu_encoder_loads_local_file(family, offline, tmp_path):
    import timm
    from safetensors.torch import save_file
    from pneumokit.models import TIMM_FAMILIES, build_model, check_timm_fit
    torch.manual_seed(0)
    name = TIMM_FAMILIES[family]
    sd = timm.create_model(name, pretrained=False).state_dict()
    f = tmp_path/(f'{name}.safetensors' if len(family) % 2 else f'{name}.pth')  # both formats, across the families
    if f.suffix == '.safetensors': save_file({k: v.contiguous() for k, v in sd.items()}, f)
    else: torch.save(sd, f)
    model = build_model('Unet', f'tu-{name}', weights=f)
    # the encoder's stem (its first 4-D weight) is the file's first 4-D tensor, value for value
    stem = next(v for v in model.encoder.state_dict().values() if v.ndim == 4)
    file_stem = next(v for v in sd.values() if v.ndim == 4)
    assert torch.equal(stem, file_stem), family
    n = sum(v.ndim >= 2 for v in model.encoder.state_dict().values())
    assert check_timm_fit(model.encoder, sd, f) == n > 0


def test_tu_encoder_bad_files(offline, tmp_path):
    import timm
    from pneumokit.models import build_model
    with pytest.raises(FileNotFoundError, match='Weights file not found: .*missing.pth'):
        build_model('Unet', 'tu-resnet18', weights=tmp_path/'missing.pth')
    (tmp_path/'junk.pth').write_bytes(b'junk')
    with pytest.raises(ValueError, match='junk.pth: cannot be read as a torch checkpoint'):
        build_model('Unet', 'tu-resnet18', weights=tmp_path/'junk.pth')
    torch.save(timm.create_model('regnetx_002').state_dict(), tmp_path/'regnet.pth')
    with pytest.raises(ValueError, match=r"regnet.pth: weights do not fit 'tu-resnet18'") as e:
        build_model('Unet', 'tu-resnet18', weights=tmp_path/'regnet.pth')
    assert '\n' not in str(e.value)  # one line

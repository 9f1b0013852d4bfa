"""Issue 23's hostile images, by cause: a decode the decoder complains about is a damaged image (audit finding, left out
of training, named by predict); every mask is encoded on its own image's grid (512², non-square); the exported kernel
survives a test file it cannot read. Damaged files are built from the real SIIM DICOMs in a temporary folder."""
import json, shutil, warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import generate_uid

from conftest import cli_fails as fails, cli_run as run
from test_bad_inputs import world  # noqa: F401  (the shared untrained run: no training here)


def damage(src: Path, dest: Path, n: int = 2000) -> Path:
    "A copy of JPEG DICOM `src` whose JPEG stream has `n` zero bytes in the middle: libjpeg decodes it, complaining."
    ds = pydicom.dcmread(src)
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    frame[len(frame) // 2:len(frame) // 2 + n] = bytes(n)
    ds.PixelData = encapsulate([bytes(frame)])
    ds.save_as(dest)
    return dest

def resized_copy(src: Path, dest: Path, rows: int, cols: int) -> Path:
    "An uncompressed copy of DICOM `src` at rows x cols, with a new SOPInstanceUID (another image)."
    import cv2
    ds = pydicom.dcmread(src)
    ds.set_pixel_data(cv2.resize(ds.pixel_array, (cols, rows), interpolation=cv2.INTER_AREA), 'MONOCHROME2', 8)
    ds.SOPInstanceUID = generate_uid()
    ds.save_as(dest)
    return dest

@pytest.fixture(scope='module')
def samples(real_data, tmp_path_factory):
    "The 10 real sample DICOMs, the first one damaged, with their labels."
    d = tmp_path_factory.mktemp('damaged')
    files = sorted((real_data/'sample-images').glob('*.dcm'))
    for p in files[1:]: shutil.copy(p, d/p.name)
    damage(files[0], d/files[0].name)
    return d, files[0], real_data/'train-rle-sample.csv'

# ------------------------------------------------------------------------------------------ a decode that complains is damage

def test_damaged_jpeg_is_an_audit_finding(samples):
    d, bad, labels = samples
    found = run('audit', labels, d, '--expected-size', 1024, '--workers', 0)
    assert found[['check', 'ImageId', 'file']].values.tolist() == [['damaged-image', bad.stem, str(d/bad.name)]]
    assert 'Corrupt JPEG data' in found.reason[0]

def test_damaged_jpeg_is_left_out_of_training_with_a_counted_warning(samples, tmp_path):
    from pneumokit.layout import CacheDir
    from pneumokit.pipeline import DATA_KINDS
    d, bad, labels = samples
    with pytest.warns(UserWarning, match=rf'1 of 10 DICOMs are damaged and left out of training \({bad.name}: damaged'):
        run('prepare', d, tmp_path/'cache', '--labels', labels, '--sizes', 32, '--workers', 0)
    assert CacheDir(tmp_path/'cache').left_out() == [bad.stem]
    assert not CacheDir(tmp_path/'cache').image(32, bad.stem).exists()
    folds = pd.DataFrame(dict(ImageId=[p.stem for p in sorted(d.glob('*.dcm'))], fold=[0, 1] * 5))
    with pytest.warns(UserWarning, match=rf'1 of the 10 images of folds.csv are damaged and left out of training \(e.g. {bad.stem}'):
        kept = DATA_KINDS['binary'].trainable(folds, tmp_path/'cache', 'folds.csv')
    assert bad.stem not in set(kept.ImageId) and len(kept) == 9

def test_damaged_jpeg_is_named_by_predict_and_still_predicted(world, samples, tmp_path):
    from pneumokit.dicom import DamagedImageWarning
    d, bad, _ = samples
    (tmp_path/'test').mkdir()
    for p in [d/bad.name, *sorted(d.glob('*.dcm'))[1:3]]: shutil.copy(p, tmp_path/'test'/p.name)
    with pytest.warns(DamagedImageWarning, match=rf'{tmp_path/"test"/bad.name}: damaged image'):
        run('predict', world/'run', tmp_path/'test', '--dest', tmp_path/'p.npy', '--device', 'cpu')
    ids = pd.read_csv(tmp_path/'p_ids.csv')
    assert len(np.load(tmp_path/'p.npy')) == 3 and bad.stem in set(ids.ImageId)  # a submission needs every row

# ------------------------------------------------------------------------------------------ masks at each image's own size

def test_masks_are_encoded_on_each_images_own_grid(world, real_data, tmp_path):
    from pneumokit.rle import read_labels, rle_decode
    src = sorted((real_data/'stage_2_images').glob('*.dcm'))
    (tmp_path/'test').mkdir()
    shutil.copy(src[0], tmp_path/'test'/src[0].name)  # 1024²
    small = resized_copy(src[1], tmp_path/'test'/'small.dcm', 512, 512)
    wide = resized_copy(src[2], tmp_path/'test'/'wide.dcm', 400, 600)
    run('predict', world/'run', tmp_path/'test', '--dest', tmp_path/'p.npy', '--device', 'cpu')
    # bottom 0: every pixel of a kept map is positive, so each row must cover exactly its own image
    run('submit', tmp_path/'p.npy', tmp_path/'s.csv', '--top', 0, '--area', 0, '--bottom', 0)
    sub = read_labels(tmp_path/'s.csv').set_index('ImageId').EncodedPixels
    want = {src[0].stem: (1024, 1024), pydicom.dcmread(small).SOPInstanceUID: (512, 512), pydicom.dcmread(wide).SOPInstanceUID: (400, 600)}
    assert set(sub.index) == set(want)
    for i, hw in want.items():
        m = rle_decode(sub[i], hw)  # a 1024² encoding of a smaller image runs past its end and raises here
        assert m.shape == hw and m.all(), (i, hw)

# ------------------------------------------------------------------------------------------ the kernel survives a bad test file

def test_kernel_writes_every_row_when_a_test_dicom_is_truncated(real_data, tmp_path, capsys):
    import torch
    from pneumokit import kernel
    from pneumokit.submission import validate_submission
    class Identity(torch.nn.Module):  # a stand-in ensemble: the image itself as the map
        def forward(self, x): return (x.float() / 255,)
    prog = torch.export.export(Identity(), (torch.zeros(2, 64, 64, dtype=torch.uint8),),
                               dynamic_shapes={'x': {0: torch.export.Dim('n', min=1, max=64)}})
    torch.export.save(prog, tmp_path/'model.pt2')
    (tmp_path/'export.json').write_text(json.dumps(dict(size=64, out_size=1024, bs=2, model='model.pt2', torch=torch.__version__,
                                                        rule=dict(rule='triplet', top=0.5, area=0, bottom=0.5))))
    (tmp_path/'test').mkdir()
    src = sorted((real_data/'stage_2_images').glob('*.dcm'))[:3]
    for p in src: shutil.copy(p, tmp_path/'test'/p.name)
    cut = tmp_path/'test'/src[1].name
    cut.write_bytes(cut.read_bytes()[:60_000])
    sub = kernel.main([str(tmp_path/'export.json'), str(tmp_path/'test'), str(tmp_path/'sub.csv')])
    out = capsys.readouterr()
    assert f'cannot read {cut}' in out.err and '1 unreadable file(s) written empty' in out.out
    ids = [p.stem for p in src]
    validate_submission(tmp_path/'sub.csv', pd.DataFrame(dict(ImageId=ids)))
    assert sub.set_index('ImageId').EncodedPixels[src[1].stem] == '-1'
    assert (sub.EncodedPixels != '-1').sum() == 2  # the readable images were predicted

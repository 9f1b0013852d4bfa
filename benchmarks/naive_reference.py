"""The official SIIM-ACR Kaggle helpers (mask_functions.py): the naive per-pixel references the benchmarks compare
against. Kept verbatim apart from the usual '-1' guard. Not part of the package."""
import numpy as np


def mask2rle(img, width, height):
    rle = []
    lastColor = 0
    currentPixel = 0
    runStart = -1
    runLength = 0
    for x in range(width):
        for y in range(height):
            currentColor = img[x][y]
            if currentColor != lastColor:
                if currentColor == 255:
                    runStart = currentPixel
                    runLength = 1
                else:
                    rle.append(str(runStart))
                    rle.append(str(runLength))
                    runStart = -1
                    runLength = 0
                    currentPixel = 0
            elif runStart > -1:
                runLength += 1
            lastColor = currentColor
            currentPixel += 1
    return " ".join(rle)

def rle2mask(rle, width, height):
    mask = np.zeros(width * height)
    if rle.strip() == '-1': return mask.reshape(width, height)  # the official code crashes on '-1'
    array = np.asarray([int(x) for x in rle.split()])
    starts = array[0::2]
    lengths = array[1::2]
    current_position = 0
    for index, start in enumerate(starts):
        current_position += start
        mask[current_position:current_position + lengths[index]] = 255
        current_position += lengths[index]
    return mask.reshape(width, height)

"""The decoded-image cache: reused when nothing changed, rebuilt when any input of the pixels did."""
import os

import numpy as np
import pytest

from mcls.data import cache as image_cache
from mcls.data.images import BadImageError
from mcls.data.table import load_train_table


def _paths(root, n=14):
    return list(load_train_table(root)["path"][:n])


def test_second_load_reads_the_same_pixels_from_a_memory_map(sample_dir, tmp_path, monkeypatch):
    paths = _paths(sample_dir)
    first, bad = image_cache.cached_images(paths, 48, cache_dir=tmp_path)
    assert bad == [] and len(list(tmp_path.glob("*.npy"))) == 1

    def no_decoding(*args, **kwargs):
        raise AssertionError("decoded again although nothing changed")

    monkeypatch.setattr(image_cache, "load_images", no_decoding)
    again, _ = image_cache.cached_images(paths, 48, cache_dir=tmp_path)
    assert isinstance(again, np.memmap) and np.array_equal(first, again)


def test_a_changed_size_file_or_crop_builds_a_new_array(sample_copy, tmp_path):
    from mcls.data.faces import CropSettings

    paths = _paths(sample_copy)
    keys = {image_cache.cache_key(paths, 48, None)}
    keys.add(image_cache.cache_key(paths, 64, None))
    keys.add(image_cache.cache_key(paths, 48, CropSettings(margin=0.2)))
    assert image_cache.cache_key(paths, 48, CropSettings(margin=0.2, device="cuda")) in keys  # same pixels
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    keys.add(image_cache.cache_key(paths, 48, None))
    assert len(keys) == 4


def test_bad_files_are_remembered_and_raise_again_under_error(sample_copy, tmp_path):
    paths = _paths(sample_copy)
    with open(paths[3], "wb"):
        pass  # truncate to an empty file
    with pytest.raises(BadImageError, match="empty file"):
        image_cache.cached_images(paths, 48, "error", cache_dir=tmp_path)
    assert not list(tmp_path.glob("*.npy"))  # nothing cached from a failed load
    images, bad = image_cache.cached_images(paths, 48, "skip", cache_dir=tmp_path)
    assert bad == [3]
    with pytest.raises(BadImageError, match="empty file"):
        image_cache.cached_images(paths, 48, "error", cache_dir=tmp_path)

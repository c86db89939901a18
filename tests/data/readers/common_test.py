"""The last step every reader shares: missing image files, summarised."""

from __future__ import annotations

import pytest

from tests.data.readers.helpers import write
from vse_tf.data import readers
from vse_tf.data.split import DataError


def test_check_files_lists_at_most_ten(tmp_path):
    names = [f"{i:02d}.jpg" for i in range(12)]
    table = write(
        tmp_path / "caps.csv", "image,caption\n" + "".join(f"{n},x\n" for n in names)
    )
    with pytest.raises(DataError) as excinfo:
        readers.read_caption_csv(table, tmp_path, check_files=True)
    message = str(excinfo.value)
    assert "12 of 12 image files missing" in message
    assert "09.jpg" in message and "10.jpg" not in message

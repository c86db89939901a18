"""What `vse_tf.evaluation` writes."""

import json

from vse_tf import evaluation


def test_metrics_files_hold_no_float_noise(tmp_path):
    values = {"i2t_r1": 95.89999999999999, "t2i_r5": 46.220000000000006, "n": 1000}
    path = evaluation.write_metrics(str(tmp_path), "test", values, {"note": "x"})
    with open(path) as f:
        text = f.read()
    assert "95.9," in text and "95.899" not in text
    assert json.loads(text) == {"i2t_r1": 95.9, "t2i_r5": 46.22, "n": 1000, "note": "x"}

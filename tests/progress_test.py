"""Plain progress lines for logs (no terminal)."""

import io

from vse_tf import progress


def test_plain_progress_prints_at_the_end_and_when_due():
    out = io.StringIO()
    bar = progress.PlainProgress(10, "image", "features", interval=3600, stream=out)
    bar.add(4)
    assert out.getvalue() == ""  # not due yet
    bar.add(6)
    line = out.getvalue().strip()
    assert line.startswith("features: 10/10 images, ")
    assert "\r" not in line and "\x1b" not in line
    every = io.StringIO()
    bar = progress.PlainProgress(3, "image", interval=0, stream=every)
    for _ in range(3):
        bar.add(1)
    lines = every.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == [
        "images: 1/3 images",
        "images: 2/3 images",
        "images: 3/3 images",
    ]
    assert "ETA" in lines[1] and "ETA" not in lines[2]


def test_bar_is_plain_when_stdout_is_not_a_terminal(capsys):
    assert not progress.interactive()
    assert isinstance(progress.bar(5, "image"), progress.PlainProgress)


def test_train_progress_lines_name_epoch_step_loss_speed_and_eta():
    out = io.StringIO()
    callback = progress.TrainProgress(4, epochs=2, batch_size=8, interval=0, stream=out)
    callback.on_train_begin()
    callback.on_epoch_begin(0)
    for step in range(4):
        callback.on_train_batch_end(step, {"loss": 2.5})
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[-1].startswith("epoch 1/2 step 4/4 loss 2.5000, ")
    assert "pairs/s" in lines[-1] and "ETA" in lines[-1]

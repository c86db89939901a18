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


def test_speed_counts_the_first_batch_and_not_resumed_work(monkeypatch):
    clock = iter([100.0, 102.0])  # construction, then the one add
    monkeypatch.setattr(progress.time, "monotonic", lambda: next(clock))
    out = io.StringIO()
    bar = progress.PlainProgress(10, "image", "index", interval=3600, stream=out)
    bar.resume(4)  # an earlier run's shards: counted, not speed
    bar.add(6)  # this run: 6 images in the 2 s since the start
    line = out.getvalue().strip()
    assert line.startswith("index: 10/10 images, 3.0 images/s"), line

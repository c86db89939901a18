"""Every command as a user meets it: --help, --print_config, refused mistakes.

Run in subprocesses with the user's environment (no TF_CPP_MIN_LOG_LEVEL),
so the output checked is exactly what a terminal shows.
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from tests import testing_utils
from vse_tf import config as config_lib

pytestmark = pytest.mark.slow(reason="runs every command as a subprocess")

COMMANDS = (
    "trainers.train",
    "trainers.extract_features",
    "trainers.evaluate",
    "export.export_saved_model",
    "export.export_tflite",
    "export.check_serving",
    "trainers.vse_index",
    "trainers.vse_search",
    "trainers.vse_words",
    "trainers.vse_serve",
    "export.export_preset",
)


def _run(*args):
    return testing_utils.run_python("-m", *args, user_env=True, timeout=300)


def _first_error_line(result):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "nothing on stderr"
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_lists_the_flags_and_exits_0(command):
    result = _run(command, "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(f"usage: python -m {command} [flags]")
    assert "--helpfull" in result.stdout
    # Nothing but the help: no TensorFlow start-up lines on a CPU machine.
    assert result.stderr.strip() == "", result.stderr[-2000:]


def test_train_help_shows_every_config_field_grouped_with_preset_defaults():
    result = _run("trainers.train", "--preset=flickr8k_lite", "--help")
    assert result.returncode == 0
    text = result.stdout
    for title in ("Preset:", "Data:", "Model:", "Training:", "Output:"):
        assert f"\n{title}\n" in text, title
    for section in config_lib.SECTIONS.values():
        for name in config_lib.field_help(section):
            assert f"--{name} " in text or f"--[no]{name} " in text, name
    preset = config_lib.get_config("flickr8k_lite")
    assert f"--backbone (default: '{preset.model.backbone}')" in text
    assert f"--epochs (default: {preset.train.epochs})" in text
    assert "--[no]augment_flip (default: True)" in text
    assert "Defaults below are those of --preset=flickr8k_lite." in text


def test_print_config_is_the_resolved_config():
    result = _run(
        "trainers.train", "--preset=flickr8k", "--embed_dim=64", "--print_config"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    expected = config_lib.override(config_lib.get_config("flickr8k"), embed_dim=64)
    assert json.loads(result.stdout) == expected.to_dict()


def test_extract_features_takes_the_same_config_flags():
    train = _run("trainers.train", "--preset=tiny", "--seed=4", "--print_config")
    extract = _run(
        "trainers.extract_features", "--preset=tiny", "--seed=4", "--print_config"
    )
    assert extract.returncode == 0, extract.stderr[-2000:]
    assert json.loads(extract.stdout) == json.loads(train.stdout)


@pytest.mark.parametrize(
    "flags, expected",
    [
        (["--data_dir=/tmp"], "error: --data_dir=/tmp is given but the data set is"),
        (["--epochs=0"], "error: --epochs=0: must be at least 1"),
        (["--epochs=3", "--lr_decay_epochs=3"], "error: --lr_decay_epochs=3 would"),
        (
            ["--preset=flickr8k", "--dataset=flickr8k", "--data_dir=/no/such/dir"],
            "error: --data_dir=/no/such/dir is not a folder",
        ),
        (["--epochs=two"], "error: flag --epochs=two: invalid literal"),
        (["--backbone=efficientnet_lite0", "--image_feature=fc7"], "error: image_fe"),
    ],
)
def test_train_refuses_mistakes_in_one_line_exit_2_workdir_untouched(
    flags, expected, tmp_path
):
    workdir = tmp_path / "run"
    result = _run("trainers.train", f"--workdir={workdir}", *flags)
    assert result.returncode == 2, result.stderr[-2000:]
    assert _first_error_line(result).startswith(expected), result.stderr
    assert not workdir.exists()


def test_fixed_data_dir_then_trains_in_the_same_workdir(tmp_path):
    workdir = tmp_path / "run"
    common = (
        "trainers.train",
        "--preset=tiny",
        "--dataset=csv",
        f"--workdir={workdir}",
    )
    wrong = _run(*common, f"--data_dir={tmp_path / 'typo'}", "--print_config")
    assert wrong.returncode == 0  # --print_config writes nothing, checks nothing
    wrong = _run(*common, f"--data_dir={tmp_path / 'typo'}", f"--cache_dir={tmp_path}")
    assert wrong.returncode == 2
    assert not workdir.exists()
    data_dir = testing_utils.write_tiny_captioned_images(str(tmp_path / "data"))
    right = _run(*common, f"--data_dir={data_dir}", f"--cache_dir={tmp_path}/c")
    assert right.returncode == 0, right.stderr[-3000:]
    assert (workdir / "config.json").exists()


def test_malformed_annotations_name_the_line_and_the_way_out(tmp_path):
    data_dir = testing_utils.write_tiny_captioned_images(str(tmp_path / "data"))
    with open(os.path.join(data_dir, "captions.csv"), "a") as f:
        f.write("images/img_0000.png,,train\n")  # an empty caption
    result = _run(
        "trainers.train",
        "--preset=tiny",
        "--dataset=csv",
        f"--data_dir={data_dir}",
        f"--cache_dir={tmp_path / 'cache'}",
        f"--workdir={tmp_path / 'run'}",
    )
    assert result.returncode == 1, result.stderr[-2000:]
    first = _first_error_line(result)
    assert first.startswith("error: ") and "captions.csv" in result.stderr
    assert "--skip_bad_examples" in result.stderr
    assert not (tmp_path / "run").exists()


def test_evaluate_without_a_trained_workdir(tmp_path):
    result = _run("trainers.evaluate", f"--workdir={tmp_path}")
    assert result.returncode == 1
    assert _first_error_line(result) == (
        f"error: {tmp_path} is not a training workdir (it has no config.json); "
        "give the --workdir that trainers.train wrote"
    )
    both = _run("trainers.evaluate", f"--workdir={tmp_path}", "--saved_model=x")
    assert both.returncode == 2
    assert _first_error_line(both).startswith("error: give exactly one of")


def test_search_without_an_index_says_how_to_build_one(tmp_path):
    result = _run("trainers.vse_search", f"--index={tmp_path / 'idx'}", "a dog")
    assert result.returncode == 1
    first = _first_error_line(result)
    assert first.startswith(f"error: no index in {tmp_path / 'idx'}")
    assert "vse-index" in first


def test_traceback_comes_back_on_request(tmp_path):
    result = testing_utils.run_python(
        "-m", "trainers.evaluate", f"--workdir={tmp_path}", "--verbosity=1"
    )
    assert result.returncode == 1
    assert "Traceback" in result.stderr
    assert "MissingError" in result.stderr


def _rsum(stdout):
    return float(re.findall(r"^rsum\s+([\d.]+)", stdout, re.M)[-1])


def test_evaluate_an_export_prints_the_workdirs_numbers(tiny_export, tmp_path):
    # A copy: evaluating a workdir writes its metrics files.
    workdir = str(shutil.copytree(tiny_export.workdir, tmp_path / "run"))
    data_dir = tiny_export.data_dir
    with open(os.path.join(workdir, "metrics_dev.json")) as f:
        dev = json.load(f)
    export = _run(
        "export.export_saved_model",
        f"--workdir={workdir}",
        f"--output_dir={tmp_path}/m",
    )
    assert export.returncode == 0, export.stderr[-2000:]
    data = ("--preset=tiny", "--dataset=csv", f"--data_dir={data_dir}")
    result = _run("trainers.evaluate", f"--saved_model={tmp_path}/m", *data)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dev (8 images" in result.stdout
    assert _rsum(result.stdout) == pytest.approx(dev["rsum"], abs=0.05)
    few = _run("trainers.evaluate", f"--workdir={workdir}", "--max_eval_images=4")
    assert few.returncode == 0, few.stderr[-3000:]
    assert "dev (4 images)" in few.stdout


# The `python -m` forms of all of them are checked above; one script per
# package checks the console-script wrappers (usage line, description, flags).
SCRIPTS = {
    "vse-train": "--workdir ",
    "vse-export": "--output_dir ",
    "vse-index": "--images ",
}


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_console_scripts_describe_themselves_and_their_flags(script):
    path = os.path.join(os.path.dirname(sys.executable), script)
    if not os.path.exists(path):
        pytest.skip(f"{script} not installed: pip install -e . puts it beside python")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    result = subprocess.run(
        [path, "--help"], capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0] == f"usage: {script} [flags]"
    assert lines[2].strip(), "no description"
    assert SCRIPTS[script] in result.stdout


def test_a_beam_runner_without_beam_says_how_to_install_it(tmp_path):
    import importlib.util

    if importlib.util.find_spec("apache_beam") is not None:
        pytest.skip(
            testing_utils.NOT_HERE + " Beam is installed (the beam tier runs it)"
        )
    result = testing_utils.run_python(
        "-m", "trainers.extract_features", "--preset=tiny",
        f"--cache_dir={tmp_path}", "--runner=FnApiRunner",
    )  # fmt: skip
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .endswith(
            'pip install -e ".[beam]" (in a venv of its own: Beam caps protobuf < 7, '
            "pyarrow < 26 and numpy < 2.5)"
        )
    )
    assert "Traceback" not in result.stderr
    result = testing_utils.run_python(
        "-m", "trainers.extract_features", "--runner=Nope"
    )
    assert result.returncode == 2 and "FnApiRunner" in result.stderr

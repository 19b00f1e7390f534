"""A user's mistake ends a command with one line naming it: no traceback, no TensorFlow start-up noise.

These run the commands as users do, in a fresh process, because what they check is the process's
own output: what TensorFlow prints at import and what reaches stderr when main raises.
"""

import json
import logging
import os
import pathlib
import re
import subprocess
import sys

import pytest

from dbdist import errors, quiet

REPO = pathlib.Path(__file__).resolve().parents[1]
TIMEOUT = 600  # s; a hang must fail the test
# TensorFlow's C++ log lines start "I0000 00:00:..." / "W1130 05:27:..."; its notices name oneDNN or cuInit.
TF_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d")


def _run(module, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TF_CPP_")}  # the defaults are under test
    env["PYTHONPATH"] = str(REPO)
    return subprocess.run([sys.executable, "-m", module, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=TIMEOUT)


def _assert_one_line_error(result, module, *expected):
    lines = result.stderr.splitlines()
    assert result.returncode == errors.EXIT_CODE, result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    noise = [line for line in lines if TF_LOG_LINE.match(line) or "oneDNN" in line or "cuInit" in line]
    assert not noise, f"TensorFlow's logs reached the user:\n{result.stderr}"
    assert len(lines) == 1 and lines[0].startswith(f"{module}: error: "), result.stderr
    for text in expected:
        assert text in lines[0]


def test_bad_flag_value_is_one_line(tmp_path):
    result = _run("dbdist.train", "--model=sd-v9", f"--data_dir={tmp_path}", f"--output_dir={tmp_path / 'run'}")
    _assert_one_line_error(result, "dbdist.train", "--model=sd-v9", "tiny")


def test_missing_records_are_one_line(tmp_path):
    result = _run("dbdist.train", f"--data_dir={tmp_path / 'nowhere'}", f"--output_dir={tmp_path / 'run'}")
    _assert_one_line_error(result, "dbdist.train", str(tmp_path / "nowhere"), "manifest.json", "make_tfrecords")


def test_bad_concepts_file_is_one_line(tmp_path):
    concepts = tmp_path / "concepts.json"
    concepts.write_text(json.dumps([{"instance_dir": "a", "instance_prompt": "a photo of sks dog"}]))
    result = _run("dbdist.make_tfrecords", f"--concepts_file={concepts}", f"--output_dir={tmp_path / 'records'}")
    _assert_one_line_error(result, "dbdist.make_tfrecords", str(concepts), "class_dir", "class_prompt")


def test_generate_refuses_more_steps_than_the_schedule_has(tmp_path):
    result = _run("dbdist.generate", "--model=tiny", "--prompt=a photo of sks ball", "--num_steps=1001",
                  f"--output_dir={tmp_path}")
    _assert_one_line_error(result, "dbdist.generate", "--num_steps=1001", "1000")
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv, verbosity", [
    (["train.py"], None),
    (["train.py", "--verbosity=1"], 1),
    (["train.py", "-v", "2", "--model=tiny"], 2),
    (["train.py", "--v=0"], 0),
    (["train.py", "-v=x"], None),  # absl itself reports the bad value
    (["tpu_vm.py", "--", "--verbosity=1"], None),  # after `--`: another command's flags
])
def test_verbosity_is_read_before_absl_parses_flags(argv, verbosity):
    assert quiet.requested_verbosity(argv) == verbosity


def test_tensorflow_logs_hidden_by_default_shown_from_debug_and_never_overriding_the_user():
    assert quiet.tensorflow_log_environment(None) == {"TF_CPP_MIN_LOG_LEVEL": "3"}
    assert quiet.tensorflow_log_environment(0) == {"TF_CPP_MIN_LOG_LEVEL": "3"}
    assert quiet.tensorflow_log_environment(1) == {"TF_CPP_MIN_LOG_LEVEL": "0"}
    environ = {"TF_CPP_MIN_LOG_LEVEL": "1"}
    quiet.set_tensorflow_log_defaults(["train.py"], environ)
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "1"}


def test_import_time_output_keeps_what_is_not_below_the_level():
    foreign = "some library's own warning\n"
    preamble = "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n"
    info = ("I0000 00:00:1796016466.565024    7248 cpu_feature_guard.cc:227] This TensorFlow binary is optimized.\n"
            "To enable the following instructions: AVX2 FMA, rebuild TensorFlow.\n")  # one record, two lines
    error = "E0000 00:00:1796016484.691457    7699 cuda_platform.cc:52] failed call to cuInit\n"
    text = foreign + preamble + info + error
    assert quiet.lines_to_show(text, 3) == foreign
    assert quiet.lines_to_show(text, 2) == foreign + error
    assert quiet.lines_to_show(text, 0) == text


def test_tensorflow_python_info_logs_follow_the_cpp_level():
    logger = logging.getLogger("tensorflow")
    saved = logger.level
    try:
        logger.setLevel(logging.NOTSET)
        quiet.quiet_tensorflow_python_logs(0)
        assert logger.level == logging.NOTSET  # --verbosity=1: TensorFlow's INFO lines too
        quiet.quiet_tensorflow_python_logs(3)
        assert logger.level == logging.WARNING
    finally:
        logger.setLevel(saved)


def test_the_named_user_errors_are_user_errors(tmp_path):
    """What errors.run reports in one line: a resume with other settings, an image under --min_size,
    a concepts mix of with and without class folders, a bad setting (the subprocess tests above
    show the same for a bad flag, missing records and a concepts file)."""
    from PIL import Image

    from dbdist.config import model_config, with_resolution
    from dbdist.data import concepts, images
    from dbdist.training.checkpointing import check_resume_compatible

    train = {"global_batch_size": 2, "grad_accum_steps": 1, "seed": 0, "train_text_encoder": False, "prior_loss_weight": 1.0}
    saved = {"model": {"preset": "tiny", "resolution": 64}, "train": train, "runtime": {"mixed_precision": "no"}}
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(errors.UserError, match="global_batch_size: 2 in the checkpoint, 4 now"):
        check_resume_compatible(str(tmp_path / "config.json"), {**saved, "train": {**train, "global_batch_size": 4}})

    Image.new("RGB", (16, 24)).save(tmp_path / "small.png")
    with pytest.raises(errors.UserError, match=r"small\.png: 16x24 image is smaller than --min_size=20"):
        images.load_image(tmp_path / "small.png", 64, min_size=20)

    with_class = concepts.Concept("a", "a photo of sks dog", "dogs", "a photo of dog", 0)
    without = concepts.Concept("b", "a photo of zzx cat", "", "", 0)
    with pytest.raises(errors.UserError, match="give all concepts a class_dir or none"):
        concepts.check_concepts([with_class, without], "concepts.json")

    with pytest.raises(errors.UserError, match="multiple of 8, got 500"):
        with_resolution(model_config("tiny"), 500)

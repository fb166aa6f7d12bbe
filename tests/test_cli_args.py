"""The config layer of the CLI: YAML + dotted overrides, and one-line errors for every user mistake."""

import pytest

from plinth.cli.args import help_text, parse
from plinth.cli.main import main
from plinth.common import PlinthError
from plinth.config import GenerateConfig, PrepareConfig, PretrainConfig


def test_defaults_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model: test\ntrain:\n  lr: 0.01\n  max_steps: 7\narch:\n  n_layer: 3\n")
    cfg = parse(PretrainConfig, ["--config", str(cfg_file), "--train.lr", "3e-4", "--no-train.progress"])
    assert cfg.model == "test"
    assert cfg.train.lr == pytest.approx(3e-4)  # the flag wins over the file
    assert cfg.train.max_steps == 7
    assert cfg.arch.n_layer == 3 and cfg.arch.d_model is None
    assert cfg.train.progress is False


def test_positional_and_list_fields():
    cfg = parse(GenerateConfig, ["runs/x", "--prompts", "Hello there", "Once", "--top_k", "5", "--stream=false"])
    assert cfg.model == "runs/x" and cfg.prompts == ["Hello there", "Once"] and cfg.top_k == 5 and not cfg.stream
    prep = parse(PrepareConfig, ["a.txt", "b/*.jsonl", "--out", "o"])
    assert prep.inputs == ["a.txt", "b/*.jsonl"] and prep.out == "o"


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("train:\n  lrr: 0.1\n", "unknown field 'train.lrr' (did you mean 'lr'?)"),
        ("train:\n  max_steps: lots\n", "field 'train.max_steps': expects an integer, got 'lots'"),
        ("train:\n  max_steps: 1.5\n", "expects an integer"),
        ("train:\n  precision: fp8\n", "must be one of auto, fp32, bf16"),
        ("train: 3\n", "train must be a mapping"),
        ("model: [1, 2]\n", "field 'model': expects a string"),
        ("train:\n  lr: [\n", "not valid YAML"),
    ],
)
def test_bad_yaml_is_one_line_naming_the_field(tmp_path, yaml_text, needle):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text(yaml_text)
    with pytest.raises(PlinthError) as err:
        parse(PretrainConfig, ["--config", str(cfg_file)])
    assert needle in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--train.lr", "fast"], "--train.lr: expects a number, got 'fast'"),
        (["--train.nope", "1"], "unknown option --train.nope"),
        (["--train", "1"], "is a section"),
        (["extra"], "unexpected argument 'extra'"),
        (["--config", "missing.yaml"], "config file missing.yaml not found"),
        (["--train.max_steps"], "expects one value, got 0"),
    ],
)
def test_bad_flags_are_one_line(argv, needle):
    with pytest.raises(PlinthError) as err:
        parse(PretrainConfig, argv)
    assert needle in str(err.value)


def test_main_exit_codes_and_messages(capsys):
    assert main(["pretrain", "--train.lr", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plinth: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert main(["frobnicate"]) == 2
    assert "unknown verb 'frobnicate'" in capsys.readouterr().err
    assert main(["data"]) == 2
    assert "needs a sub-command" in capsys.readouterr().err


def test_help_lists_every_field(capsys):
    text = help_text(PretrainConfig, "plinth pretrain", "Pretrain.")
    for name in ("--model", "--arch.n_layer", "--data.shards", "--train.lr", "--train.resume"):
        assert name in text
    assert main(["pretrain", "--help"]) == 0
    assert "--train.max_steps" in capsys.readouterr().out
    assert main([]) == 0
    assert "quickstart" in capsys.readouterr().out

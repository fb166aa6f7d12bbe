"""The config layer of the CLI: YAML + dotted overrides, and one-line errors for every user mistake."""

import pytest

from plinth.cli.args import help_text, parse
from plinth.cli.main import main
from plinth.common import PlinthError
from plinth.config import GenerateConfig, PrepareConfig, PretrainConfig


def test_defaults_yaml_then_flags(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("model: test\noptim:\n  lr: 0.01\nrun:\n  max_steps: 7\narch:\n  n_layer: 3\n")
    cfg = parse(PretrainConfig, ["--config", str(cfg_file), "--optim.lr", "3e-4", "--no-run.progress"])
    assert cfg.model == "test"
    assert cfg.optim.lr == pytest.approx(3e-4)  # the flag wins over the file
    assert cfg.run.max_steps == 7
    assert cfg.arch == {"n_layer": 3}
    assert cfg.run.progress is False


def test_positional_and_list_fields():
    cfg = parse(GenerateConfig, ["runs/x", "--prompts", "Hello there", "Once", "--top_k", "5", "--stream=false"])
    assert cfg.model == "runs/x" and cfg.prompts == ["Hello there", "Once"]
    assert cfg.sampling.top_k == 5 and not cfg.stream
    prep = parse(PrepareConfig, ["a.txt", "b/*.jsonl", "--out", "o"])
    assert prep.inputs == ["a.txt", "b/*.jsonl"] and prep.out == "o"


@pytest.mark.parametrize(
    ("yaml_text", "needle"),
    [
        ("optim:\n  lrr: 0.1\n", "unknown field 'optim.lrr' (did you mean 'lr'?)"),
        ("run:\n  max_steps: lots\n", "field 'run.max_steps': expects an integer, got 'lots'"),
        ("run:\n  max_steps: 1.5\n", "expects an integer"),
        ("system:\n  precision: fp8\n", "must be one of auto, fp32, bf16"),
        ("optim: 3\n", "optim must be a mapping"),
        ("model: [1, 2]\n", "field 'model': expects a string"),
        ("optim:\n  lr: [\n", "not valid YAML"),
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
        (["--optim.lr", "fast"], "--optim.lr: expects a number, got 'fast'"),
        (["--optim.nope", "1"], "unknown option --optim.nope"),
        (["--optim", "1"], "is a section"),
        (["extra"], "unexpected argument 'extra'"),
        (["--config", "missing.yaml"], "config file missing.yaml not found"),
        (["--run.max_steps"], "expects one value, got 0"),
    ],
)
def test_bad_flags_are_one_line(argv, needle):
    with pytest.raises(PlinthError) as err:
        parse(PretrainConfig, argv)
    assert needle in str(err.value)


def test_main_exit_codes_and_messages(capsys):
    assert main(["pretrain", "--optim.lr", "x"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plinth: error:") and err.count("\n") == 1 and "Traceback" not in err
    assert main(["frobnicate"]) == 2
    assert "unknown verb 'frobnicate'" in capsys.readouterr().err
    assert main(["data"]) == 2
    assert "needs a sub-command" in capsys.readouterr().err


def test_help_lists_every_field(capsys):
    text = help_text(PretrainConfig, "plinth pretrain", "Pretrain.")
    for name in ("--model", "--arch.n_layer", "--data.shards", "--optim.lr", "--run.resume", "--system.device"):
        assert name in text
    assert main(["pretrain", "--help"]) == 0
    assert "--run.max_steps" in capsys.readouterr().out
    assert main([]) == 0
    assert "quickstart" in capsys.readouterr().out

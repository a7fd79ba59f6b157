"""lstm-generate on a text_char run's checkpoint: the vocabulary from the checkpoint alone, seeded samples, prompt
characters the model lacks named, one-line mistakes."""

from __future__ import annotations

import pytest

from lstm_train.cli.generate import load_model
from lstm_train.cli.generate import main as generate_main
from lstm_train.runs.checkpoint import load_checkpoint
from lstm_train.tasks.text_char import TextChar


def test_the_vocabulary_comes_back_from_the_checkpoint_alone(char_run):
    ckpt = char_run.dir / "checkpoints/best.pt"
    assert not char_run.data.exists()  # the text file the run read is gone
    _, task, _ = load_model(ckpt)
    assert isinstance(task, TextChar) and "".join(task.vocab.tokens) == load_checkpoint(ckpt)["task"]["vocab"]["chars"]


def test_samples_are_seeded(char_run, capsys):
    args = [str(char_run.dir / "checkpoints/best.pt"), "--prompt", "the ", "--length", "12", "--seed", "3",
            "--num-samples", "2"]
    generate_main(args)
    first = capsys.readouterr().out
    generate_main(args)
    assert capsys.readouterr().out == first and first.count("the ") >= 2 and "\n---\n" in first
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(("prompt", "warning"), [
    ("THE CAT", "6 of the input's 7 tokens (86%) are not in the model's vocabulary and read as unknown "
                "('T', 'H', 'E', 'C', 'A')"),  # no capitals in the text it learnt
    ("the the the the$", "1 of the input's 16 tokens (6%) are not in the model's vocabulary and read as unknown "
                         "('$')"),  # one in 16: named too
], ids=["capitals", "one-in-16"])
def test_prompt_characters_the_model_lacks_are_named(char_run, capsys, prompt, warning):
    generate_main([str(char_run.dir / "checkpoints/best.pt"), "--prompt", prompt, "--length", "1"])
    assert capsys.readouterr().err == (
        f"lstm-generate: warning: {warning}; it was trained on task=text_char ({char_run.data})\n")


@pytest.mark.parametrize(("args", "message"), [
    (["--temperature", "-1"], "argument --temperature: must be >= 0, got -1.0"),
    (["--temperature", "nan"], "argument --temperature: must be >= 0, got nan"),
    (["--top-k", "0"], "argument --top-k: must be > 0, got 0"),
    (["--length", "-5"], "argument --length: must be >= 0, got -5"),
    (["--num-samples", "0", "--top-k", "0"], "argument --num-samples: must be > 0, got 0"),  # the first named
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt-file", "/nonexistent/p.txt"], "--prompt-file: no file at"),
], ids=["temperature", "temperature-nan", "top-k", "length", "num-samples", "empty-prompt", "prompt-file"])
def test_generate_bad_inputs_are_one_line(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as exit_:
        generate_main([str(tmp_path / "missing.pt"), *args])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_generate_missing_checkpoint(tmp_path, capsys):
    with pytest.raises(SystemExit):
        generate_main([str(tmp_path / "missing.pt")])
    assert capsys.readouterr().err.strip() == (
        f"lstm-generate: error: no checkpoint file at {tmp_path}/missing.pt (nothing there); give a run dir or a "
        "checkpoint in one (RUN/checkpoints/best.pt)")

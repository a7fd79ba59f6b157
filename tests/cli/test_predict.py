"""lstm-predict on the checkpoints of whole runs in-process (a tagger, a character-aware tagger, a text
classifier, seq2seq): tags and labels, formats, one-line errors, unknown words named."""

from __future__ import annotations

import io
import json

import pytest
import torch

from lstm_train.cli import predict
from lstm_train.runs.checkpoint import load_checkpoint, save_checkpoint
from lstm_train.tasks.seq2seq import transduce
from lstm_train.train import train
from tests.helpers import cls_cfg, compose_config, threads, write_rows

pytestmark = pytest.mark.usefixtures("one_thread")


def tagging_run(tmp_path_factory, *overrides: str):
    """A debug-sized tag_synthetic run (composed here: module-scoped fixtures run it once for the file)."""
    cfg = compose_config("debug=fast", "model=tagger", "task=tag_synthetic", "task.rule=first", "task.vocab_size=5",
                         "task.train_size=1024", "trainer.max_epochs=5", "optim.lr=0.02", *overrides)
    out = tmp_path_factory.mktemp("run")
    with threads(1):
        train(cfg, out)
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tagging_run(tmp_path_factory)


@pytest.fixture(scope="module")
def char_run_dir(tmp_path_factory):
    return tagging_run(tmp_path_factory, "model.char_dim=6", "model.char_hidden=8")


def test_train_writes_token_metrics(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["test"]) == {"loss", "acc"}
    assert metrics["test"]["acc"] > 0.98  # the majority tag ("other") alone gives ~0.8 here
    assert (run_dir / "checkpoints" / "best.pt").is_file()


def expected_tags(words: list[str]) -> list[str]:
    return ["same" if w == words[0] else "other" for w in words]


def test_predict_round_trip(run_dir, capsys, monkeypatch):
    checkpoint = str(run_dir / "checkpoints" / "best.pt")
    model, task, cfg = predict.load(checkpoint)
    assert cfg.model.name == "tagger" and task.tags == ["other", "same"]
    sentences = ["3 1 3 4 3 0 2", "0 0 1 2 0"]
    with torch.no_grad():
        direct = [model(task.encode(s.split())[None])[0].argmax(-1).tolist() for s in sentences]
    slash = [
        " ".join(f"{w}/{task.tags[t]}" for w, t in zip(s.split(), tags, strict=True))
        for s, tags in zip(sentences, direct, strict=True)
    ]
    predict.main([checkpoint, *sentences])
    assert capsys.readouterr().out.splitlines() == slash
    # the trained model gets the rule right on these short sentences
    assert [[task.tags[t] for t in tags] for tags in direct] == [expected_tags(s.split()) for s in sentences]

    monkeypatch.setattr("sys.stdin", io.StringIO(sentences[0] + "\n\n" + sentences[1] + "\n"))
    predict.main([checkpoint, "--format", "columns"])
    columns = ["".join(token.replace("/", "\t") + "\n" for token in line.split()) for line in slash]
    # a blank line after each sentence, as in CoNLL files; the empty input line gives an empty output line
    assert capsys.readouterr().out == columns[0] + "\n" + "\n" + columns[1] + "\n"
    predict.main([checkpoint, "--format", "tags", "3 7 3"])  # 7: not a word of the vocabulary: <unk>
    assert len(capsys.readouterr().out.split()) == 3


def error_of(capsys, argv) -> str:
    with pytest.raises(SystemExit) as exit_:
        predict.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("lstm-predict: error: ")
    return err


def test_predict_errors_are_one_line(run_dir, tmp_path, capsys):
    assert "no checkpoint file at" in error_of(capsys, [str(tmp_path / "missing.pt"), "a b"])
    text = tmp_path / "text.pt"
    text.write_text("not a checkpoint")
    assert "is not an lstm-train checkpoint" in error_of(capsys, [str(text), "a b"])
    state = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    state["config"]["model"]["name"] = "char"
    save_checkpoint(tmp_path / "char.pt", {k: v for k, v in state.items() if k != "format"})
    handled = "holds a char model; lstm-predict handles classifier, tagger, seq2seq"
    assert handled in error_of(capsys, [str(tmp_path / "char.pt"), "a"])


def test_only_the_checkpoint_is_required(capsys):
    with pytest.raises(SystemExit) as exit_:
        predict.main([])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == (
        "lstm-predict: error: the following arguments are required: checkpoint")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_predict_at_a_terminal_says_how_to_give_inputs(run_dir, capsys, monkeypatch):
    checkpoint = str(run_dir / "checkpoints" / "best.pt")
    monkeypatch.setattr("sys.stdin", Terminal("3 1 3\n"))
    predict.main([checkpoint, "--format", "tags"])
    out, err = capsys.readouterr()
    assert len(out.split()) == 3  # the tags of the line typed
    assert err == ("lstm-predict: reading inputs from the terminal, one per line, until Ctrl-D; or give them as "
                   "arguments after the checkpoint, or from a file: lstm-predict CKPT < inputs.txt\n")
    monkeypatch.setattr("sys.stdin", io.StringIO("3 1 3\n"))  # a pipe: nothing to say
    predict.main([checkpoint, "--format", "tags"])
    assert capsys.readouterr().err == ""


def test_predict_reads_the_characters_of_new_words(char_run_dir, capsys):
    """A character-aware tagger: lstm-predict spells each word for it, unknown words included."""
    metrics = json.loads((char_run_dir / "metrics.json").read_text())
    assert metrics["test"]["acc"] > 0.98
    checkpoint = str(char_run_dir / "checkpoints" / "best.pt")
    model, task, _ = predict.load(checkpoint)
    assert model.chars is not None and task.inputs.chars == 12  # <pad>, <unk> and the digits
    sentences = ["3 1 3 4 3 0 2", "0 12 0 1 97"]  # 12, 97: not words of the vocabulary; their digits are known
    with torch.no_grad():
        logits = [task.forward(model, task.batch([s.split()]))[0] for s in sentences]
    predict.main([checkpoint, *sentences])
    slash = [" ".join(f"{w}/{task.tags[t]}" for w, t in zip(s.split(), out.argmax(-1).tolist(), strict=True))
             for s, out in zip(sentences, logits, strict=True)]
    assert capsys.readouterr().out.splitlines() == slash
    assert slash[0] == " ".join(f"{w}/{t}" for w, t in zip(sentences[0].split(), expected_tags(sentences[0].split()),
                                                           strict=True))
    # both unknown words read as <unk>, yet the model sees two different words
    assert task.encode(["12", "97"]).tolist() == [1, 1] and not torch.allclose(logits[1][1], logits[1][4])


def test_visualize_plots_a_character_aware_taggers_word_lstm(char_run_dir, tmp_path):
    """Its character LSTM runs over each distinct word, not over the sentence's steps: no plot of it."""
    from lstm_train.cli.visualize import write_plots

    written = write_plots(char_run_dir / "checkpoints" / "best.pt", tmp_path, text="3 1 3 12 0")
    assert sorted(p.name for p in written) == ["gates_encoder.lstm.l0.png", "gates_encoder.lstm.l0_reverse.png",
                                                "saturation.png"]


def test_tools_warn_when_much_of_the_input_is_unknown(run_dir, tmp_path, capsys):
    """A tagger of digits given English reads every word as <unk>: one warning line says so, naming the task."""
    from lstm_train.cli.visualize import write_plots

    checkpoint = str(run_dir / "checkpoints" / "best.pt")
    warning = ("warning: 3 of the input's 5 tokens (60%) are not in the model's vocabulary and read as unknown "
               "('The', 'jury', 'said'); it was trained on task=tag_synthetic")
    predict.main([checkpoint, "The jury said 3 1"])
    captured = capsys.readouterr()
    assert len(captured.out.splitlines()) == 1 and captured.err == f"lstm-predict: {warning}\n"
    write_plots(checkpoint, tmp_path, text="The jury said 3 1")
    assert capsys.readouterr().err == f"lstm-visualize: {warning}\n"
    predict.main([checkpoint, "3 1 3 4 3 0 2 9"])  # one unknown word in 8: no warning
    assert capsys.readouterr().err == ""


# ---- a text classifier ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def text_cls_run(tmp_path_factory):
    """(checkpoint, test metrics, data file) of a text_cls run long enough to classify its tiny data."""
    root = tmp_path_factory.mktemp("text_cls")
    data = write_rows(root, "csv")
    cfg = cls_cfg(compose_config, data, "task.min_count=1", "trainer.max_epochs=15", "optim.lr=0.02")
    with threads(1):
        metrics = train(cfg, root / "run")
    return str(root / "run" / "checkpoints" / "best.pt"), metrics["test"], data


TEXTS = ["the cat is good", "A fog was bad!"]


def probabilities_of(checkpoint: str, texts: list[str]) -> list[torch.Tensor]:
    model, task, _ = predict.load(checkpoint)
    with torch.no_grad():
        return [model(task.encode(t)[None])[0].softmax(-1) for t in texts]


def test_predict_classifies_new_text(text_cls_run, capsys):
    """lstm-predict on a text_cls checkpoint: a label and its probability per input."""
    checkpoint, test, _ = text_cls_run
    assert test["acc"] == 1.0
    _, task, _ = predict.load(checkpoint)
    probabilities = probabilities_of(checkpoint, TEXTS)
    predict.main([checkpoint, *TEXTS, "--top", "2"])
    assert capsys.readouterr().out.splitlines() == [
        "\t".join(f"{task.labels[i]} {float(p[i]):.3f}" for i in p.argsort(descending=True).tolist())
        for p in probabilities]
    assert [task.labels[int(p.argmax())] for p in probabilities] == ["pos", "neg"]


def test_predict_reads_texts_from_stdin_and_writes_json(text_cls_run, capsys, monkeypatch):
    checkpoint, _, _ = text_cls_run
    probabilities = probabilities_of(checkpoint, TEXTS[:1])
    monkeypatch.setattr("sys.stdin", io.StringIO(TEXTS[0] + "\n\n"))  # an empty line: a null label
    predict.main([checkpoint, "--json"])
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert records == [{"input": TEXTS[0], "label": "pos", "probabilities": {"pos": pytest.approx(
        float(probabilities[0].max()), abs=1e-5)}}, {"input": "", "label": None, "probabilities": {}}]


def test_a_task_state_that_does_not_fit_is_one_line(text_cls_run, tmp_path, capsys):
    state = load_checkpoint(text_cls_run[0])  # a task state without its vocabulary
    del state["format"]
    save_checkpoint(tmp_path / "no_vocab.pt", {**state, "task": {"labels": ["neg", "pos"]}})
    with pytest.raises(SystemExit):
        predict.main([str(tmp_path / "no_vocab.pt"), "good"])
    assert capsys.readouterr().err == (f"lstm-predict: error: {tmp_path}/no_vocab.pt: its task state does not fit "
                                       "task text_cls (KeyError('tokens'))\n")


def test_weights_of_another_size_are_one_line(text_cls_run, tmp_path, capsys):
    state = load_checkpoint(text_cls_run[0])
    del state["format"]
    model_weights = {k: v[:1] if k.endswith("head.weight") else v for k, v in state["model"].items()}
    save_checkpoint(tmp_path / "small.pt", {**state, "model": model_weights})
    with pytest.raises(SystemExit):
        predict.main([str(tmp_path / "small.pt"), "good"])
    assert capsys.readouterr().err.startswith(f"lstm-predict: error: {tmp_path}/small.pt: its weights do not fit its "
                                              "model (size mismatch for head.weight")


def test_words_the_classifier_lacks_are_named(text_cls_run, capsys):
    checkpoint, _, data = text_cls_run
    predict.main([checkpoint, "the zebra sang", "loudly today"])  # 4 of 5 words unknown
    assert capsys.readouterr().err == (
        "lstm-predict: warning: 4 of the input's 5 tokens (80%) are not in the model's vocabulary and read as unknown "
        f"('zebra', 'sang', 'loudly', 'today'); it was trained on task=text_cls ({data})\n")


# ---- a seq2seq model ------------------------------------------------------------------------------------------
def test_predict_transduces_as_the_trained_model_does(seq2seq_run, capsys):
    # one output line per input, the same as transduce on the trained model
    inputs = ["cat", "waax"] if seq2seq_run.cfg.task.name == "g2p" else ["3 1 2", "0 0 5 4"]
    checkpoint = seq2seq_run.dir / "checkpoints" / "best.pt"
    model, task, _ = predict.load(checkpoint)
    predict.main([str(checkpoint), *inputs, "--beam-size", "3"])
    assert capsys.readouterr().out.splitlines() == list(transduce(model, task, inputs, beam_size=3))


def test_predict_refuses_a_beam_size_below_one(seq2seq_run, capsys):
    with pytest.raises(SystemExit) as exit_:
        predict.main([str(seq2seq_run.dir / "checkpoints" / "best.pt"), "cat", "--beam-size", "0"])
    assert exit_.value.code == 2 and "--beam-size: must be >= 1" in capsys.readouterr().err

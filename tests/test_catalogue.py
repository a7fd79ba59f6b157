"""The bad-input catalogue: user mistakes at the command line, each with the one line it gets.

Every case runs the real console-script entry point (tests/catalogue_driver.py runs them all in one process)
and must exit non-zero with exactly one line on stderr, no traceback, and lose nothing already saved. The
table of docs/errors.md, "What a mistake gets", lists the same cases: a test keeps the two in step. Data-file mistakes
beyond the few here are in tests/tasks/test_bad_data.py.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import torch

from lstm_train.runs import rundir
from lstm_train.train import train
from tests import ROOT, TESTS
from tests.helpers import ENV, compose_config

TEXT = "In the beginning God created the heaven and the earth.\nAnd the earth was without form.\n" * 30


class Payload:
    """Arbitrary Python objects in a pickle: torch.load(weights_only=True) refuses them."""

    def __reduce__(self):
        return (print, ("this would run on load",))


# (id, what the user did, program, arguments, the start of the one line on stderr after "<program>: error: ",
# exit status). {d} is the test's work dir, {cls} a classifier run dir, {char} a char LM run dir.
CASES = [
    # -- config keys and values
    ("wrong-type", "a value of the wrong type", "lstm-train", ["model.hidden_size=abc"],
     "model.hidden_size: Value 'abc' of type 'str' could not be converted to Integer; give an integer, e.g. "
     "model.hidden_size=64", 2),
    ("unknown-key", "a misspelt key", "lstm-train", ["model.hiden_size=64"],
     "model.hiden_size: unknown key; did you mean model.hidden_size? The keys here are: name, backend, hidden_size",
     2),
    ("added-key", "a new key added with +", "lstm-train", ["+model.foo=1"],
     "model.foo: unknown key; the keys here are: name, backend", 2),
    ("unknown-option", "an option a group does not have", "lstm-train", ["model=transformer"],
     "model=transformer: no such option; choose one of char, classifier, seq2seq, tagger", 2),
    ("group-as-value", "a group given a value", "lstm-train", ["debug=true"],
     "debug=true: debug is a config group, not a value; choose one of its options: debug=fast", 2),
    ("sweep-without-m", "a comma list without -m", "lstm-train", ["optim.lr=1e-3,3e-3"],
     "optim.lr=1e-3,3e-3: a comma list is a sweep: add -m (--multirun)", 2),
    ("negative-size", "a negative size", "lstm-train", ["model.hidden_size=-3"],
     "model.hidden_size: must be > 0, got -3", 2),
    ("dropout-1", "dropout of 1 or more", "lstm-train", ["model.dropout=1.5"],
     "model.dropout: must be in [0, 1), got 1.5", 2),
    ("huge-lr", "a learning rate past float32", "lstm-train", ["optim.lr=1e300"],
     "optim.lr: must be > 0 and at most 3.4e38 (float32's range), got 1e+300", 2),
    ("bad-backend", "an unknown LSTM backend", "lstm-train", ["model.backend=cudnn"],
     "model.backend: must be one of fast, reference, torch; got 'cudnn'", 2),
    ("no-limit", "no step or epoch limit", "lstm-train", ["trainer.max_steps=null", "trainer.max_epochs=null"],
     "trainer.max_steps: set trainer.max_steps or trainer.max_epochs (both are null)", 2),
    ("bad-monitor", "a monitor the task does not have", "lstm-train", ["trainer.monitor=val/f1"],
     "trainer.monitor: task first_last has no metric val/f1; it has val/loss, val/acc", 2),
    ("monitor-not-val", "a monitor that is not a val metric", "lstm-train", ["trainer.monitor=acc"],
     "trainer.monitor: must name a validation metric such as val/acc; got 'acc'", 2),
    ("nesterov", "Nesterov momentum without momentum", "lstm-train", ["optim=sgd", "optim.momentum=0"],
     "optim.nesterov: Nesterov momentum needs optim.momentum > 0 and optim.dampening = 0", 2),
    ("min-len", "a minimum length above the maximum", "lstm-train",
     ["model=seq2seq", "task=reverse", "task.min_len=20", "task.seq_len=10"],
     "task.min_len: must be <= task.seq_len (20 > 10)", 2),
    ("fractions", "val and test fractions that leave no training data", "lstm-train",
     ["task=text_char", "model=char", "task.val_fraction=0.6", "task.test_fraction=0.5"],
     "task.val_fraction: task.val_fraction + task.test_fraction must be < 1", 2),
    # -- model and task that do not fit
    ("tagger-on-classification", "a tagger on a classification task", "lstm-train", ["model=tagger"],
     "model: model=tagger is a tagging model and does not fit task=first_last, a classification task; "
     "use model=classifier", 2),
    ("classifier-on-lm", "a classifier on a language-model task", "lstm-train", ["task=text_char"],
     "model: model=classifier is a classification model and does not fit task=text_char", 2),
    ("bidirectional-lm", "a bidirectional language model", "lstm-train",
     ["model=char", "task=text_char", "model.bidirectional=true"],
     "model.bidirectional: a language model reads left to right; set it to false", 2),
    ("tie-weights", "tied weights of different sizes", "lstm-train",
     ["model=char", "task=text_char", "model.tie_weights=true", "model.hidden_size=32"],
     "model.tie_weights: needs model.hidden_size == model.embedding_dim (32 != 64)", 2),
    # -- devices
    ("no-cuda", "CUDA on a machine without it", "lstm-train", ["trainer.device=cuda"],
     "trainer.device: cuda requested but this torch sees no CUDA device", 2),
    ("cuda-index", "a CUDA device index the machine lacks", "lstm-train", ["trainer.device=cuda:7"],
     "trainer.device: cuda:7 requested but this torch sees no CUDA device", 2),
    ("bad-device", "a device that does not exist", "lstm-train", ["trainer.device=tpu"],
     "trainer.device: must be auto, cpu, cuda, cuda:N or mps; got 'tpu'", 2),
    ("zero-devices", "zero processes", "lstm-train", ["trainer.devices=0"],
     "trainer.devices: must be > 0, got 0", 2),
    # -- data files
    ("data-missing", "a data file that does not exist", "lstm-train",
     ["task=text_char", "model=char", "task.path={d}/nope.txt"], "task.path: no file at {d}/nope.txt", 2),
    ("data-empty", "an empty data file", "lstm-train", ["task=text_char", "model=char", "task.path={d}/empty.txt"],
     "task.path: {d}/empty.txt is empty", 2),
    ("data-binary", "a binary file as text", "lstm-train", ["task=text_char", "model=char", "task.path={d}/binary.txt"],
     "task.path: {d}/binary.txt:1: a NUL byte: this is a binary file, not text", 2),
    ("data-latin1", "a text file that is not UTF-8", "lstm-train",
     ["task=text_char", "model=char", "task.path={d}/latin1.txt"],
     "task.path: {d}/latin1.txt:1: not UTF-8 text (byte 0xe9", 2),
    ("csv-comma", "a CSV row with an unquoted comma", "lstm-train",
     ["task=text_cls", "task.path={d}/comma.csv", "task.text_column=text", "task.label_column=label"],
     "task.path: {d}/comma.csv:3: 3 fields, the header has 2; quote a field that holds a comma", 2),
    ("tsv-tab", "a TSV text with a tab in it", "lstm-train",
     ["task=text_cls", "task.path={d}/tab.tsv", "task.text_column=text", "task.label_column=label"],
     "task.path: {d}/tab.tsv:3: 3 tab-separated fields, the header has 2", 2),
    ("jsonl-broken", "a JSONL line that is not JSON", "lstm-train",
     ["task=text_cls", "task.path={d}/broken.jsonl", "task.text_column=text", "task.label_column=label"],
     "task.path: {d}/broken.jsonl:2: not JSON", 2),
    ("conll-columns", "a CoNLL file whose lines have different columns", "lstm-train",
     ["model=tagger", "task=conll", "task.train={d}/ragged.conll", "task.val={d}/ragged.conll"],
     "task.train: {d}/ragged.conll:2: 3 columns, line 1 has 2", 2),
    ("g2p-line", "a pronunciation line without phonemes", "lstm-train",
     ["model=seq2seq", "task=g2p", "task.path={d}/bad.dict"],
     "task.path: {d}/bad.dict:2: expected 'word PH1 PH2 ...', got 'lonely'", 2),
    # -- checkpoints given to trainer.resume
    ("resume-missing", "resuming from a file that does not exist", "lstm-train", ["trainer.resume={d}/none.pt"],
     "trainer.resume: no checkpoint file at {d}/none.pt (nothing there); give a run dir or a checkpoint in one "
     "(RUN/checkpoints/last.pt)", 2),
    ("resume-text", "resuming from a file that is not a checkpoint", "lstm-train", ["trainer.resume={d}/notes.txt"],
     "trainer.resume: {d}/notes.txt is not an lstm-train checkpoint (truncated or not a torch file)", 2),
    ("resume-truncated", "resuming from a truncated checkpoint", "lstm-train", ["trainer.resume={d}/truncated.pt"],
     "trainer.resume: {d}/truncated.pt is not an lstm-train checkpoint (truncated or not a torch file)", 2),
    ("resume-malicious", "resuming from a pickle of arbitrary objects", "lstm-train",
     ["trainer.resume={d}/malicious.pt"],
     "trainer.resume: {d}/malicious.pt is not an lstm-train checkpoint (it holds arbitrary Python objects)", 2),
    ("resume-foreign", "resuming from another program's torch file", "lstm-train", ["trainer.resume={d}/foreign.pt"],
     "trainer.resume: {d}/foreign.pt is not an lstm-train checkpoint (format 1)", 2),
    ("resume-other-size", "resuming with another hidden size", "lstm-train",
     ["model.hidden_size=32", "trainer.resume={cls}/checkpoints/last.pt"],
     "trainer.resume: {cls}/checkpoints/last.pt holds a different model: model.hidden_size (checkpoint 16, now 32)",
     2),
    ("resume-other-task", "resuming on another task", "lstm-train",
     ["model=tagger", "task=tag_synthetic", "trainer.resume={cls}/checkpoints/last.pt"],
     "trainer.resume: {cls}/checkpoints/last.pt was trained on task=first_last, not task=tag_synthetic", 2),
    ("run-dir-taken", "a run dir that holds another run's checkpoints", "lstm-train", ["hydra.run.dir={cls}"],
     "hydra.run.dir: {cls} already holds a run's checkpoints (last.pt, best.pt), which this run would overwrite", 2),
    # -- the run itself
    ("diverged", "a learning rate so high the loss overflows", "lstm-train",
     ["optim=sgd", "optim.lr=1e38", "trainer.clip_grad_norm=0"],
     "training diverged: train/loss is inf at step", 1),
    ("unwritable-dir", "a run dir that cannot be made", "lstm-train", ["hydra.run.dir=/proc/lstm-train-run"],
     "/proc/lstm-train-run: No such file or directory; the run dir must be writable with free space", 1),
    # -- the other command-line tools
    ("generate-classifier", "sampling from a classifier", "lstm-generate", ["{cls}/checkpoints/best.pt"],
     "{cls}/checkpoints/best.pt is a classifier model on first_last; sampling needs model=char task=text_char", 2),
    ("generate-truncated", "sampling from a truncated checkpoint", "lstm-generate", ["{d}/truncated.pt"],
     "{d}/truncated.pt is not an lstm-train checkpoint (truncated or not a torch file)", 2),
    ("generate-malicious", "sampling from a pickle of arbitrary objects", "lstm-generate", ["{d}/malicious.pt"],
     "{d}/malicious.pt is not an lstm-train checkpoint (it holds arbitrary Python objects)", 2),
    ("generate-temperature", "a negative temperature", "lstm-generate",
     ["{char}/checkpoints/best.pt", "--temperature", "-1"], "argument --temperature: must be >= 0, got -1.0", 2),
    ("predict-char", "predicting with a char LM", "lstm-predict", ["{char}/checkpoints/best.pt", "hello"],
     "{char}/checkpoints/best.pt holds a char model; lstm-predict handles classifier, tagger, seq2seq models", 2),
    ("predict-missing", "predicting with a checkpoint that does not exist", "lstm-predict", ["{d}/none.pt", "x"],
     "no checkpoint file at {d}/none.pt (nothing there); give a run dir or a checkpoint in one "
     "(RUN/checkpoints/best.pt)", 2),
    ("predict-foreign", "predicting with a file that is not a checkpoint", "lstm-predict", ["{d}/notes.txt", "x"],
     "{d}/notes.txt is not an lstm-train checkpoint (truncated or not a torch file)", 2),
    ("visualize-missing", "plotting a checkpoint that does not exist", "lstm-visualize", ["{d}/none.pt"],
     "no checkpoint file at {d}/none.pt (nothing there); give a run dir or a checkpoint in one "
     "(RUN/checkpoints/best.pt)", 2),
    ("visualize-text-file", "plotting with a text file that does not exist", "lstm-visualize",
     ["{char}/checkpoints/best.pt", "--text-file", "{d}/none.txt"], "no file at {d}/none.txt", 2),
    # -- checkpoints the tools refuse, the tools' devices and output (tools)
    ("tools-target", "a checkpoint that names a module of its own", "lstm-predict", ["{d}/target.pt", "1"],
     "{d}/target.pt: task._target_: lstm_helpers.Mine is outside lstm_train and a checkpoint imports nothing by "
     "itself; if you trust that code, pass --import lstm_helpers", 2),
    ("tools-relative-target", "a checkpoint that names a relative module", "lstm-visualize", ["{d}/relative.pt"],
     "{d}/relative.pt: model._target_: '..evil.X' is not a class of a module", 2),
    ("tools-no-config", "a checkpoint without its config", "lstm-generate", ["{d}/bare.pt"],
     "{d}/bare.pt is not a complete lstm-train checkpoint: it has no config", 2),
    ("tools-model-string", "a checkpoint whose config.model is a string", "lstm-predict",
     ["{d}/model-string.pt", "1"],
     "{d}/model-string.pt is not a complete lstm-train checkpoint: its config.model is str 'classifier', not a "
     "mapping", 2),
    ("tools-cuda", "CUDA for a tool on a machine without it", "lstm-predict",
     ["{cls}/checkpoints/best.pt", "1", "--device", "cuda"],
     "--device cuda: this torch sees 0 CUDA device(s); use --device cpu", 2),
    ("predict-numbers", "a first_last input of the wrong length", "lstm-predict",
     ["{cls}/checkpoints/best.pt", "1 2 3"],
     "input 1: 3 numbers; a first_last model reads steps of 10 numbers (task.input_size): give a multiple of 10, "
     "e.g. 80 for the 8 steps it was trained on", 2),
    ("visualize-out-file", "plots into a file", "lstm-visualize",
     ["{cls}/checkpoints/best.pt", "--out", "{d}/notes.txt"],
     "--out {d}/notes.txt is a file; give a directory (made if missing)", 2),
    ("visualize-out-unwritable", "plots into a directory that cannot be made", "lstm-visualize",
     ["{cls}/checkpoints/best.pt", "--out", "/proc/lstm-gates"],
     "--out /proc/lstm-gates: cannot make it (No such file or directory); give a writable directory", 2),
    # -- config: the likely fix for a typo, before the list
    ("misspelt-trainer-key", "a misspelt trainer key", "lstm-train", ["trainer.max_step=10"],
     "trainer.max_step: unknown key; did you mean trainer.max_steps? The keys here are: seed, max_epochs", 2),
    ("misspelt-option", "a misspelt group option", "lstm-train", ["model=clasifier"],
     "model=clasifier: no such option; did you mean model=classifier? Choose one of char, classifier, seq2seq, "
     "tagger", 2),
    ("misspelt-value", "a misspelt value of a fixed set", "lstm-train", ["model.backend=fst"],
     "model.backend: got 'fst'; did you mean fast? Must be one of fast, reference, torch", 2),
    ("misspelt-metric", "a misspelt monitor", "lstm-train", ["trainer.monitor=val/accuracy"],
     "trainer.monitor: task first_last has no metric val/accuracy; did you mean val/acc? It has val/loss, val/acc",
     2),
    # -- config: sizes that cannot fit, seeds torch refuses
    ("huge-model", "a model too large for memory", "lstm-train", ["model.hidden_size=1000000"],
     "model.hidden_size: 1000000 is too large: training needs at least 192 TB for a model of 1.2e+13 recurrent "
     "weights (4 float32 copies: weights, gradients, optimizer state) and this machine has ", 2),
    ("huge-batch", "sequences too long for memory", "lstm-train", ["task.seq_len=100000000"],
     "task.seq_len: 100000000 is too large: one training batch (128 sequences of 100000000 steps through 2 layers of "
     "64 units) keeps at least 26.2 TB of activations for the backward pass and this machine has ", 2),
    ("huge-seed", "a seed torch cannot take", "lstm-train", ["trainer.seed=1e23"],
     "trainer.seed: must be an integer in [-2**63, 2**64 - 1] (the range torch.manual_seed accepts), got 1e+23", 2),
    # -- LSTM variants and recurrent regularisers (issue 25)
    ("variant-gru", "an LSTM variant for a GRU", "lstm-train", ["model.cell=gru", "model.variant=v"],
     "model.cell: model.variant=v changes an LSTM's cell; model.cell=gru has none", 2),
    ("variant-torch", "an LSTM variant on torch.nn.LSTM", "lstm-train", ["model.backend=torch", "model.zoneout_c=0.5"],
     "model.backend: model.zoneout_c=0.5 needs our LSTM: torch.nn.LSTM has no variants", 2),
    ("zoneout-1", "zoneout of 1 or more", "lstm-train", ["model.zoneout_h=1"],
     "model.zoneout_h: must be in [0, 1), got 1", 2),
    ("resume-variant", "resuming a checkpoint as another variant", "lstm-train",
     ["debug=fast", "model.variant=v", "trainer.resume={cls}/checkpoints/last.pt"],
     "trainer.resume: {cls}/checkpoints/last.pt holds a different model: model.variant (checkpoint lstm, now v)",
     2),
    # -- resuming with another config, and checkpoints a resume cannot use (issue 24)
    ("resume-other-seed", "resuming with another seed", "lstm-train",
     ["debug=fast", "trainer.seed=3", "trainer.resume={cls}/checkpoints/last.pt"],
     "trainer.resume: {cls}/checkpoints/last.pt was trained with trainer.seed=0, not 3, which a resumed run cannot "
     "change", 2),
    ("resume-other-batch", "resuming with another batch size", "lstm-train",
     ["debug=fast", "trainer.batch_size=64", "trainer.resume={cls}/checkpoints/last.pt"],
     "trainer.resume: {cls}/checkpoints/last.pt was trained with trainer.batch_size=32, not 64, which a resumed run "
     "cannot change", 2),
    ("resume-other-data", "resuming on other data of the same task", "lstm-train",
     ["debug=fast", "task.seq_len=9", "trainer.resume={cls}/checkpoints/last.pt"],
     "trainer.resume: {cls}/checkpoints/last.pt was trained on other data: task.seq_len (checkpoint 8, now 9)", 2),
    ("resume-other-init", "resuming with another initialisation", "lstm-train",
     ["debug=fast", "model.forget_bias=0.5", "trainer.resume={cls}/checkpoints/last.pt"],
     "trainer.resume: {cls}/checkpoints/last.pt holds a different model: model.forget_bias (checkpoint 2.0, now 0.5)",
     2),
    ("resume-partial", "resuming from a checkpoint with keys missing", "lstm-train",
     ["debug=fast", "trainer.resume={d}/partial.pt"],
     "trainer.resume: {d}/partial.pt cannot be resumed: optimizer, progress missing", 2),
    ("resume-mixed-best", "resuming beside a best.pt of another save", "lstm-train",
     ["debug=fast", "trainer.resume={d}/mixed/last.pt"],
     "trainer.resume: {d}/mixed/best.pt holds step 3, but {d}/mixed/last.pt records its best at step 5", 2),
    ("resume-corrupt-best", "resuming beside a damaged best.pt", "lstm-train",
     ["debug=fast", "trainer.resume={d}/corrupt/last.pt"],
     "trainer.resume: {d}/corrupt/best.pt is not an lstm-train checkpoint (truncated or not a torch file); move it "
     "away to resume with the best restarted", 2),
    # -- run dirs (issue 24: a refused run changes nothing; one run at a time in a dir)
    ("run-dir-metrics-only", "a run dir that holds a run's metrics.json and no checkpoints", "lstm-train",
     ["hydra.run.dir={d}/metrics-only"], "hydra.run.dir: {d}/metrics-only already holds a run's metrics.json "
     "(without checkpoints), which this run would overwrite; choose another hydra.run.dir", 2),
    ("run-dir-in-use", "a run dir another run is using", "lstm-train", ["hydra.run.dir={d}/busy"],
     "hydra.run.dir: {d}/busy is in use by lstm-train (pid", 2),
    # -- rerunning a run dir (issue 28: provenance and rerun)
    ("rerun-no-dir", "--rerun without a run dir", "lstm-train", ["--rerun"],
     "--rerun: needs the run dir to train again; give one, as lstm-train --rerun outputs/runs/<run> [key=value ...]",
     2),
    ("rerun-missing", "rerunning a dir that does not exist", "lstm-train", ["--rerun", "{d}/none"],
     "--rerun {d}/none: no such directory; give a run dir, as lstm-train --rerun outputs/runs/<run> [key=value ...]",
     2),
    ("rerun-file", "rerunning a file", "lstm-train", ["--rerun", "{d}/notes.txt"],
     "--rerun {d}/notes.txt: not a directory; give a run dir, as lstm-train --rerun outputs/runs/<run>", 2),
    ("rerun-not-run-dir", "rerunning a dir that is not a run dir", "lstm-train", ["--rerun", "{cls}"],
     "--rerun {cls}: not a run dir of lstm-train (it has no .hydra/overrides.yaml); give a run dir, as lstm-train "
     "--rerun outputs/runs/<run>", 2),
    ("rerun-sweep-dir", "rerunning a sweep dir", "lstm-train", ["--rerun", "{d}/sweep"],
     "--rerun {d}/sweep: a sweep dir; give one of its job dirs such as {d}/sweep/0_trainer.seed=1", 2),
    # -- grid sweeps started again (issue 28)
    ("sweep-other-grid", "a sweep started again with another grid", "lstm-train",
     ["-m", "optim.lr=0.2,0.3", "hydra.sweep.dir={d}/grid"],
     "hydra.sweep.dir: {d}/grid holds job 0 with optim.lr=0.1, where this sweep's job 0 has optim.lr=0.2", 2),
    # -- Optuna searches (issue 28: this project's sweeper, pruning)
    ("sweep-pruner-without-storage", "a pruner for a study kept in memory", "lstm-train",
     ["-m", "hparams_search=first_last", "hydra/sweeper/pruner=median", "hydra.sweeper.storage=null",
      "hydra.sweep.dir={d}/in-memory"],
     "hydra.sweeper.pruner: a pruner needs the study in a storage, through which each trial's process reports its "
     "values", 2),
    ("sweep-study-other-direction", "continuing a study in the other direction", "lstm-train",
     ["-m", "debug=fast", "hydra/sweeper=optuna_study", "hydra.sweeper.study_name=s", "hydra.sweep.dir={d}/study",
      "optim.lr=interval(1e-3, 1e-2)"],
     "trainer.monitor: the study s in sqlite:///{d}/study/optuna.db was started to minimize its value, this search "
     "would maximize it", 2),
    ("sweep-no-trial-completed", "an Optuna search whose every trial fails", "lstm-train",
     ["-m", "debug=fast", "hydra/sweeper=optuna_study", "hydra.sweeper.n_trials=1", "model.hidden_size=choice(-3)",
      "hydra.sweep.dir={d}/failing"],
     "no trial of study first_last-classifier-debug completed (1 failed); the errors are in "
     "{d}/failing/sweep_summary.md: fix their cause", 1),
    # Hydra's modes
    ("multirun-with-cfg", "-m with --cfg (or --info)", "lstm-train", ["--cfg", "job", "-m", "debug=fast"],
     "-m (--multirun) cannot be combined with --cfg, --info or --shell-completion; drop -m to see one job's config",
     2),
    # newcomer walkthrough (checkpoints)
    ("predict-not-run-dir", "predicting with a dir that is not a run dir", "lstm-predict", ["{d}/study", "1"],
     "{d}/study holds no checkpoints/ (not a run dir?); give a run dir or a .pt file", 2),
    ("resume-not-run-dir", "resuming from a dir that is not a run dir", "lstm-train", ["trainer.resume={d}/study"],
     "trainer.resume: {d}/study holds no checkpoints/ (not a run dir?); give a run dir or a .pt file", 2),
    ("resume-missing-dir", "resuming from a run dir that does not exist", "lstm-train", ["trainer.resume={d}/nope"],
     "trainer.resume: no checkpoint file at {d}/nope (nothing there); give a run dir or a checkpoint in one "
     "(RUN/checkpoints/last.pt)", 2),
    ("generate-length", "a negative length to generate", "lstm-generate",
     ["{char}/checkpoints/best.pt", "--length", "-5"], "argument --length: must be >= 0, got -5", 2),
    ("generate-top-k", "top-k of 0", "lstm-generate", ["{char}/checkpoints/best.pt", "--top-k", "0"],
     "argument --top-k: must be > 0, got 0", 2),
    ("visualize-sweep-dir", "plotting a dir of run dirs (a sweep dir)", "lstm-visualize", ["{d}"],
     "{d} is a sweep dir, not a run dir; give one of its job dirs, such as {d}/char", 2),
    # newcomer walkthrough (config)
    ("adam-one-beta", "Adam's betas with one value", "lstm-train", ["optim.betas=[0.9]"],
     "optim.betas: must be two decay rates [b1, b2], each in [0, 1), got [0.9]; e.g. optim.betas=[0.9,0.999]", 2),
    ("interpolation-not-found", "an interpolation of a key that is not there", "lstm-train",
     ["model.hidden_size=${{oops}}"], "model.hidden_size: Interpolation key 'oops' not found; an interpolation must "
     "name a key of the config (lstm-train --cfg job shows them)", 2),
    ("char-on-classification", "a language model on a classification task", "lstm-train", ["model=char"],
     "model: model=char is a language model and does not fit task=first_last, a classification task; "
     "use model=classifier", 2),
    ("conll-without-files", "a CoNLL task without its files", "lstm-train", ["model=tagger", "task=conll"],
     "task.train: needs the path of a CoNLL-U or column file; set task.train=PATH", 2),
    ("key-without-group", "a group's key without its group", "lstm-train", ["max_steps=10"],
     "max_steps: unknown key; did you mean trainer.max_steps? Keys of a group are set under it, as "
     "trainer.max_steps=VALUE", 2),
    ("help-as-override", "help without its dashes", "lstm-train", ["help"],
     "help: not an override; for the config groups and keys: ", 2),
    ("key-space-value", "a key and its value apart", "lstm-train", ["model.hidden_size", "64"],
     "model.hidden_size: an override is key=value, without spaces; write model.hidden_size=64", 2),
    ("key-as-option", "a key written as an --option", "lstm-train", ["--max_steps", "10"],
     "--max_steps: not an option of lstm-train; settings are key=value overrides: trainer.max_steps=10", 2),
    ("wrong-type-bool", "a word where true or false goes", "lstm-train", ["model.bidirectional=maybe"],
     "model.bidirectional: Value 'maybe' is not a valid bool (type str); give true or false, e.g. "
     "model.bidirectional=false", 2),
]


def digest(path: Path) -> dict[str, str]:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file() and ".hydra" not in p.parts and p.name != "train.log"}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict:
    d = tmp_path_factory.mktemp("catalogue")
    torch.set_num_threads(1)
    text = d / "text.txt"
    text.write_text(TEXT, encoding="utf-8")
    train(compose_config("debug=fast"), d / "cls")
    train(compose_config("debug=fast", "task=text_char", "model=char", f"task.path={text}", "task.val_fraction=0.1",
                         "task.test_fraction=0.1", "task.sample_length=0"), d / "char")
    checkpoint = (d / "cls/checkpoints/last.pt").read_bytes()
    (d / "truncated.pt").write_bytes(checkpoint[: len(checkpoint) // 2])
    state = torch.load(d / "cls/checkpoints/last.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k not in ("optimizer", "progress")}, d / "partial.pt")
    for name, best in (("mixed", 5), ("corrupt", state["progress"]["best"]["step"])):
        (d / name).mkdir()
        torch.save({**state, "progress": {**state["progress"], "best": {**state["progress"]["best"], "step": best}}},
                   d / name / "last.pt")
    torch.save({**state, "progress": {**state["progress"], "step": 3}}, d / "mixed/best.pt")
    (d / "corrupt/best.pt").write_bytes(checkpoint[: len(checkpoint) // 2])
    (d / "malicious.pt").write_bytes(pickle.dumps({"model": Payload()}))
    torch.save({"weight": torch.zeros(2)}, d / "foreign.pt")
    # checkpoints the tools refuse (tools): a module named by the checkpoint, a relative one, keys missing
    (d / "lstm_helpers.py").write_text("raise SystemExit('imported by a checkpoint')\n")
    state = torch.load(d / "cls/checkpoints/best.pt", weights_only=True)
    torch.save({**state, "config": {**state["config"], "task": {"name": "mine", "_target_": "lstm_helpers.Mine"}}},
               d / "target.pt")
    torch.save({**state, "config": {**state["config"], "model": {**state["config"]["model"],
                                                                 "_target_": "..evil.X"}}}, d / "relative.pt")
    torch.save({"format": 1}, d / "bare.pt")
    torch.save({**state, "config": {**state["config"], "model": "classifier"}}, d / "model-string.pt")
    (d / "notes.txt").write_text("not a checkpoint\n")
    (d / "empty.txt").write_bytes(b"")
    (d / "binary.txt").write_bytes(b"\x00\x01\x02" * 100)
    (d / "latin1.txt").write_bytes("caf\u00e9 au lait\n".encode("latin-1") * 50)
    (d / "comma.csv").write_text("text,label\ngood film,1\ngood, if long,0\n")
    (d / "tab.tsv").write_text("text\tlabel\ngood film\t1\ngood\tlong\t0\n")
    (d / "broken.jsonl").write_text('{"text": "good", "label": 1}\n{text: bad}\n')
    (d / "ragged.conll").write_text("EU B-ORG\nrejects O O\n")
    (d / "bad.dict").write_text("hello HH AH0 L OW1\nlonely\n")
    (d / "sweep/0_trainer.seed=1/.hydra").mkdir(parents=True)  # a sweep dir (rerun-sweep-dir)
    (d / "sweep/multirun.yaml").write_text("hydra: {}\n")
    (d / "metrics-only").mkdir()
    (d / "metrics-only/metrics.json").write_bytes((d / "cls/metrics.json").read_bytes())
    (d / "grid/0_optim.lr=0.1/.hydra").mkdir(parents=True)  # a sweep dir whose job 0 ran with optim.lr=0.1
    (d / "grid/0_optim.lr=0.1/.hydra/overrides.yaml").write_text("- optim.lr=0.1\n")
    (d / "grid/0_optim.lr=0.1/.hydra/hydra.yaml").write_text("hydra:\n  job:\n    num: 0\n")
    (d / "study").mkdir()  # an Optuna study that minimizes its value
    optuna.create_study(storage=f"sqlite:///{d}/study/optuna.db", study_name="s", direction="minimize")
    before = digest(d / "cls")

    commands = [[program, *(a.format(d=d, cls=d / "cls", char=d / "char") for a in args),
                 *([f"hydra.run.dir={d / 'runs' / case}", "trainer.progress_bar=false"]
                   if program == "lstm-train" and not any(a.startswith("hydra.run.dir=") for a in args) else [])]
                for case, _, program, args, _, _ in CASES]
    with rundir.claim(d / "busy", undo_if_refused=False):  # a run in progress there: this process
        proc = subprocess.run([sys.executable, str(TESTS / "catalogue_driver.py")],
                              input=json.dumps(commands), capture_output=True, text=True, env=ENV, timeout=600, cwd=d)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith('{"code"')]
    assert len(lines) == len(CASES), proc.stdout[-3000:]
    return {"dir": d, "before": before, "after": digest(d / "cls"),
            **{case[0]: result for case, result in zip(CASES, lines, strict=True)}}


@pytest.mark.parametrize(("case", "what", "program", "args", "expected", "code"), CASES, ids=[c[0] for c in CASES])
def test_a_mistake_gets_one_line_and_a_non_zero_exit(results, case, what, program, args, expected, code):
    d = results["dir"]
    result = results[case]
    assert result["traceback"] is None, result["traceback"]
    lines = result["stderr"].strip().splitlines()
    assert len(lines) == 1, result["stderr"]
    assert lines[0].startswith(f"{program}: error: " + expected.format(d=d, cls=d / "cls", char=d / "char")), lines[0]
    assert result["code"] == code


def test_nothing_already_saved_is_lost(results):
    assert results["before"] == results["after"]  # the run dir the mistakes pointed at is untouched


def test_the_readme_table_lists_every_case():
    """The docs' catalogue (docs/errors.md, moved there from the README) lists every case with its line."""
    page = (ROOT / "docs/errors.md").read_text()
    table = page[page.index("# What a mistake gets") :]
    for case, what, _, _, expected, _ in CASES:
        shown = re.sub(r"\{(d|cls|char)\}", "…", expected)
        assert f"| {what} |" in table and shown in table, case


FULL_DISK = """
import errno, sys, torch
from lstm_train import train
real, calls = torch.save, []
def save(obj, f, *args, **kwargs):  # the disk fills up after the first checkpoint
    calls.append(f)
    if len(calls) > 2:  # after the first evaluation's last.pt and best.pt
        raise OSError(errno.ENOSPC, "No space left on device")  # as a write to an open file does: no file name
    return real(obj, f, *args, **kwargs)
torch.save = save
sys.argv = ["lstm-train", *sys.argv[1:]]
train.main()
"""


def test_a_full_disk_is_one_line_and_keeps_the_checkpoint_saved_before(tmp_path):
    proc = subprocess.run([sys.executable, "-c", FULL_DISK, "debug=fast", f"hydra.run.dir={tmp_path}"], env=ENV,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [
        f"lstm-train: error: {tmp_path}/checkpoints/last.pt: No space left on device; the run dir must be "
        "writable with free space: free some, or choose another with hydra.run.dir=DIR (checkpoints already "
        "saved are intact)"
    ]
    assert torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["progress"]["step"] == 8
    assert "No space left on device" in (tmp_path / "train.log").read_text()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temp file

"""Classify, tag or transduce inputs with a checkpoint: ``python scripts/predict.py CKPT [INPUT ...]``.

The same as the ``lstm-predict`` console script (lstm_train/cli/predict.py); ``--help`` lists the options.
"""

from lstm_train.cli.predict import main

if __name__ == "__main__":
    main()

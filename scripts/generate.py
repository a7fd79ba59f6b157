"""Sample text from a char-model checkpoint: ``python scripts/generate.py CKPT --prompt ...``.

The same as the ``lstm-generate`` console script (lstm_train/cli/generate.py); ``--help`` lists the options.
"""

from lstm_train.cli.generate import main

if __name__ == "__main__":
    main()

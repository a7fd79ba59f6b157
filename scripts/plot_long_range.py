"""Accuracy against sequence length from a long-range sweep: ``python scripts/plot_long_range.py SWEEP_DIR``.

Run the sweep first with ``lstm-train -m experiment=long_range``; the logic lives in lstm_train/cli/long_range.py.
"""

from lstm_train.cli.long_range import main

if __name__ == "__main__":
    main()

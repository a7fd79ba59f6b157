"""Plot an LSTM checkpoint's gates on one input: ``python scripts/visualize_gates.py CKPT [--text ...] [--out DIR]``.

Heatmaps of every gate per layer, a saturation summary, and for text the text coloured by one unit; the logic
lives in lstm_train/cli/visualize.py; ``--help`` lists the options.
"""

from lstm_train.cli.visualize import main

if __name__ == "__main__":
    main()

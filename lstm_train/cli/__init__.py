"""The command-line tools besides lstm-train: lstm-generate, lstm-predict, lstm-visualize, the long-range plot; and
how lstm-train reports what stops it (report.py)."""

"""The test suite: tests/<folder>/ mirrors lstm_train/<folder>/; the files every test folder reads live here."""

from pathlib import Path

TESTS = Path(__file__).resolve().parent  # fixtures/, toy_model/, catalogue_driver.py
ROOT = TESTS.parent  # the checkout: conf/, scripts/, README.md

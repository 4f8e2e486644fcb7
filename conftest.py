"""Make the doctest fixtures of tests/conftest.py available to the package's docstrings."""

pytest_plugins = ["tests.conftest"]

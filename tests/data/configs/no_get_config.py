"""A config file without get_config() (tests/main_test.py)."""

NAME = "no get_config"

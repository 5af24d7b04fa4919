"""A config file that does not parse (tests/main_test.py)."""

def get_config(:
  pass

"""The data sets' configs: one `get_config(arg)` per file.

Installed with the library, so that `--config=configs/dsprites.py` works from
any directory (`msdr_jax.main` reads the installed file when the current
directory has no `configs/`), and `from configs import dsprites` in your own
code. Loading one imports no JAX.
"""

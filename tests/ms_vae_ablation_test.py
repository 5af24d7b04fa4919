"""The MS-VAE ablation's variants: valid configs, and its default is the library's."""

import pathlib

import pytest

from configs import dsprites
from experiments import ms_vae_ablation
from msdr_jax import configuration

CHECKPOINT = str(pathlib.Path(__file__).parent / "data" / "pytorch" / "burgess_c1.legacy.pt")


@pytest.mark.parametrize("variant", list(ms_vae_ablation.VARIANTS))
def test_every_variant_is_a_valid_config_on_the_imported_stage_one(variant):
  config = ms_vae_ablation.variant_config(CHECKPOINT, variant, "quick")
  configuration.validate(config)
  assert config.stage1.model.architecture == "burgess"
  assert config.stage2.family == "vae"
  vector = variant.startswith("vector")
  assert (config.stage2.vae.latent_resolution == 0) == vector
  assert (config.stage2.vae.kl_warmup_steps > 0) == variant.endswith("warmup")


def test_the_default_variant_is_the_librarys_ms_vae():
  default = dsprites.get_config("preset=quick").stage2.vae
  ablated = ms_vae_ablation.variant_config(CHECKPOINT, "map_warmup", "quick").stage2.vae
  assert ablated.to_dict() == default.to_dict()


def test_rows_format_as_the_table():
  row = {"variant": "map_warmup", "step": 300, "kl_w": 12.345, "mse_stage1": 25.0,
         "mse": 10.0, "mse_ratio": 2.5, "fidelity": 0.9512}
  assert ms_vae_ablation.format_row(row) == (
      "| map_warmup | 300 | 12.35 | 25.00 | 10.00 | 2.50x | 0.951 |")
  assert ms_vae_ablation.format_row(dict(row, fidelity=None)).endswith("| n/a |")
  assert ms_vae_ablation.HEADER.count("|---") == 7

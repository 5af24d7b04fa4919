"""Ground-truth data sets, by name (`config.data.name`)."""

from msdr_jax.data import dsprites
from msdr_jax.data.ground_truth import GroundTruthData

DATASETS = {
    "dsprites": dsprites.DSprites,
}


def get_dataset(data_config) -> GroundTruthData:
  """Builds the data set named by `data_config.name`."""
  return DATASETS[data_config.name]()

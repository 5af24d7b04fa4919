"""Metrics: disentanglement on ground-truth factors, conditioning fidelity, and
the image metrics (`reconstruction`: BCE, PSNR, SSIM; `sample_quality`: FID, KID).

Every metric follows disentanglement_lib (Locatello et al. 2019) and its
study defaults, so numbers are comparable with published tables. Each comes
in two forms: `compute_<metric>(representation_fn, dataset, seed, ...)`
draws its own points, and an array form scores fixed codes. `suite.evaluate`
runs them all.
"""

from msdr_jax.metrics.beta_vae import beta_vae_score
from msdr_jax.metrics.beta_vae import compute_beta_vae
from msdr_jax.metrics.data import RepresentationFn
from msdr_jax.metrics.data import sample_codes
from msdr_jax.metrics.dci import compute_dci
from msdr_jax.metrics.dci import dci_scores
from msdr_jax.metrics.factor_vae import compute_factor_vae
from msdr_jax.metrics.factor_vae import factor_vae_score
from msdr_jax.metrics.fidelity import conditioning_fidelity
from msdr_jax.metrics.information import compute_mig
from msdr_jax.metrics.information import discrete_entropy
from msdr_jax.metrics.information import discrete_mutual_info
from msdr_jax.metrics.information import histogram_discretize
from msdr_jax.metrics.information import mutual_information_gap
from msdr_jax.metrics.modularity import compute_modularity_explicitness
from msdr_jax.metrics.modularity import modularity_explicitness
from msdr_jax.metrics.sap import compute_sap
from msdr_jax.metrics.sap import sap_score
from msdr_jax.metrics.suite import evaluate
from msdr_jax.metrics.suite import evaluate_codes

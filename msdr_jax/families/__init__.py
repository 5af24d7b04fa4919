"""Stage-two families, by `config.stage2.family`."""

from msdr_jax.families import base
from msdr_jax.families import flow
from msdr_jax.families import gan
from msdr_jax.families import gmm
from msdr_jax.families import vae

FAMILIES = {
    "vae": vae.ConditionalVAE,
    "flow": flow.Flow,
    "gan": gan.ConditionalGAN,
    "gmm": gmm.ConditionalGMM,
}

# `config.stage2.family = "none"` trains and evaluates stage one only.
NO_STAGE_TWO = "none"

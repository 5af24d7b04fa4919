"""Stage-two families, by `config.stage2.family`."""

from msdr_jax.families import base
from msdr_jax.families import flow
from msdr_jax.families import gan
from msdr_jax.families import gmm
from msdr_jax.families import vae

FAMILIES: dict[str, type[base.Family]] = {
    family.NAME: family
    for family in (vae.ConditionalVAE, flow.Flow, gan.ConditionalGAN, gmm.ConditionalGMM)
}

# `config.stage2.family = "none"` trains and evaluates stage one only.
NO_STAGE_TWO = "none"

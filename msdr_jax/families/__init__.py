"""Stage-two families, by `config.stage2.family`."""

from msdr_jax.families import base
from msdr_jax.families import ms_flow
from msdr_jax.families import ms_gan
from msdr_jax.families import ms_gmm
from msdr_jax.families import ms_vae

FAMILIES: dict[str, type[base.Family]] = {
    family.NAME: family
    for family in (ms_vae.ConditionalVAE, ms_flow.Flow, ms_gan.ConditionalGAN,
                   ms_gmm.ConditionalGMM)
}

# `config.stage2.family = "none"` trains and evaluates stage one only.
NO_STAGE_TWO = "none"

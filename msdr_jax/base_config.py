"""The shared default config: disentanglement_lib's settings and presets.

Each file in configs/ names its data set and calls `get_config` here (the
package is importable wherever the library is installed, which a config file
next to it is not), then adjusts what its data set needs. This module imports
nothing of the library, so loading a config file does not import JAX.
"""

import ml_collections

PRESETS = ("paper", "long", "quick", "tiny")
ARGUMENTS = ("preset", "source")

# The disentanglement metrics, in the order the suite computes them; the first
# four share their points.
METRICS = ("mig", "dci", "sap", "modularity", "beta_vae", "factor_vae")


def metric_settings() -> ml_collections.ConfigDict:
  """disentanglement_lib's study defaults (its `unsupervised_study_v1` metric configs).

  `config.eval.disentanglement`, and the default settings of
  `msdr_jax.metrics.suite`.
  """
  settings = ml_collections.ConfigDict()
  settings.metrics = ",".join(METRICS)
  settings.num_train = 10_000  # MIG, DCI, SAP, modularity.
  settings.num_test = 5_000  # DCI, SAP, explicitness.
  settings.histogram_bins = 20  # MIG and modularity.
  settings.dci_learner = "gbt"
  settings.dci_boosting_stages = 100  # Per factor, as scikit-learn's default.
  settings.sap_continuous_factors = False
  settings.beta_vae = ml_collections.ConfigDict(
      {"batch_size": 64, "num_train": 10_000, "num_eval": 5_000})
  settings.factor_vae = ml_collections.ConfigDict({
      "batch_size": 64, "num_train": 10_000, "num_eval": 5_000,
      "num_variance_estimate": 10_000, "prune_threshold": 0.05})
  return settings


# The sections `config.stage2.<family>`, one per stage-two family
# (`families.FAMILIES` has the same names).
FAMILY_SECTIONS = ("vae", "flow", "gan", "gmm")


def eval_config() -> ml_collections.ConfigDict:
  """`config.eval` at full scale, with disentanglement_lib's metric defaults."""
  config = ml_collections.ConfigDict()
  # Reconstruction statistics, KL, TC and active latents.
  config.num_points = 10_000
  config.batch_size = 1_000
  config.traversal_steps = 10
  config.traversal_range = 2.5  # Latents swept over +-range around 0.
  config.active_variance_threshold = 0.01
  config.disentanglement = metric_settings()
  config.sample_quality = ml_collections.ConfigDict()
  # Generated and real images for FID and KID; 0 skips them.
  config.sample_quality.num_samples = 10_000
  config.sample_quality.feature_extractor = "random_conv"
  # A local .npz of pytorch-fid's Inception weights, for "inception_v3"
  # (made by experiments/convert_inception_weights.py).
  config.sample_quality.inception_weights = ""
  config.sample_quality.kid_subset_size = 1_000
  config.sample_quality.kid_num_subsets = 100
  return config


def parse_arg(arg: str) -> dict[str, str]:
  """Parses big_vision style `key=value,key=value` config arguments."""
  options = {}
  for item in filter(None, arg.split(",")):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(
          f"Config argument {item!r} is not key=value; use e.g. preset=quick."
      )
    options[key.strip()] = value.strip()
  unknown = set(options) - set(ARGUMENTS)
  if unknown:
    raise ValueError(
        f"Unknown config argument(s) {sorted(unknown)}; the arguments are "
        f"preset={'|'.join(PRESETS)} and source=procedural|tfds|file."
    )
  preset = options.get("preset", "paper")
  if preset not in PRESETS:
    raise ValueError(f"Unknown preset {preset!r}; choose one of {PRESETS}.")
  return options


def get_config(arg: str, data_name: str, default_source: str) -> ml_collections.ConfigDict:
  """The config of data set `data_name` for `arg`, e.g. 'preset=quick,source=tfds'.

  The defaults are disentanglement_lib's (the "paper" preset); the other
  presets shorten training (see configs/dsprites.py).
  """
  options = parse_arg(arg)
  preset = options.get("preset", "paper")
  source = options.get("source", default_source)

  config = ml_collections.ConfigDict()
  suffix = "" if source == default_source else f"-{source}"
  config.name = f"{data_name}{suffix}-{preset}"
  config.seed = 0

  config.data = ml_collections.ConfigDict()
  config.data.name = data_name
  # procedural (rendered in the step) | tfds (a prepared TFDS data_dir) | file.
  config.data.source = source
  # TFDS data_dir for source=tfds; empty: TFDS's default (~/tensorflow_datasets).
  config.data.data_dir = ""
  # For source=file: the official file (dSprites or MPI3D .npz) or directory
  # (Cars3D's .mat files).
  config.data.path = ""
  # Where loaded images live: device (accelerator memory, batches gathered in
  # the jitted step) or host (for data sets larger than device memory).
  config.data.placement = "device"

  config.stage1 = ml_collections.ConfigDict()
  config.stage1.model = ml_collections.ConfigDict()
  config.stage1.model.architecture = "dlib_conv"
  config.stage1.model.latent_dim = 10
  config.stage1.model.likelihood = "bernoulli"

  config.stage1.objective = ml_collections.ConfigDict()
  config.stage1.objective.name = "beta_tcvae"
  config.stage1.objective.beta = 6.0
  config.stage1.objective.alpha = 1.0
  config.stage1.objective.gamma = 1.0
  config.stage1.objective.tc_estimator = "mss"

  config.stage1.optimizer = ml_collections.ConfigDict()
  config.stage1.optimizer.name = "adam"
  config.stage1.optimizer.learning_rate = 1e-4
  config.stage1.optimizer.b1 = 0.9
  config.stage1.optimizer.b2 = 0.999
  config.stage1.optimizer.eps = 1e-8

  config.stage1.num_steps = 300_000
  # A stage-one work directory (or its checkpoints/ directory), or a PyTorch
  # checkpoint (a torch.save file, or a folder holding model.pt; see
  # msdr_jax/pytorch_import.py), to load instead of training stage one;
  # empty: train stage one in this run.
  config.stage1.checkpoint = ""

  config.stage2 = ml_collections.ConfigDict()
  config.stage2.family = "vae"  # vae | flow | gan | gmm | none (stage one only).
  # What stage two sees of stage one: y = dec(z) and z ("image_and_code"),
  # only y ("image"), or only z ("code").
  config.stage2.conditioning = "image_and_code"
  config.stage2.num_steps = 100_000
  config.stage2.optimizer = config.stage1.optimizer.copy_and_resolve_references()
  config.stage2.vae = ml_collections.ConfigDict()
  # w: a 16x16 map, one latent per 4x4 patch; 0 for a vector (`families/ms_vae.py`).
  config.stage2.vae.latent_resolution = 16
  config.stage2.vae.latent_channels = 1
  config.stage2.vae.beta = 1.0
  config.stage2.vae.kl_warmup_steps = 500
  config.stage2.flow = ml_collections.ConfigDict()
  config.stage2.flow.num_levels = 2  # dSprites pixels are binary.
  config.stage2.flow.num_couplings = 8
  config.stage2.flow.hidden_features = 32
  # The flow's first layer: stage one's own Bernoulli decoder turned into a
  # standard normal ("stage_one"; binary images and a Bernoulli stage one),
  # so that a fresh flow has exactly stage one's likelihood; or the logit
  # transform into a standard normal base ("gaussian"; any images), where
  # logit_alpha keeps the bin edges finite.
  config.stage2.flow.base = "stage_one"
  config.stage2.flow.logit_alpha = 0.05
  # w ~ N(0, T^2 I). With the Gaussian base, at T = 1 the dequantisation
  # noise the flow models turns into salt-and-pepper pixels that hide z from
  # stage one; a lower T keeps the samples clean. With stage one's base, T = 1
  # samples the model itself and keeps z as well. Reconstructions are exact
  # at any T. (Measurements: experiments/RESULTS.md, "Why the defaults are
  # what they are", and docs/stage_two.md.)
  config.stage2.flow.sample_temperature = 0.5
  # MS-GAN is MS-VAE (its w, warm-up and loss) with a discriminator on samples.
  # The defaults are the ablation's best (docs/stage_two.md, "MS-GAN"); with
  # them the discriminator barely trains, and no variant tried made samples
  # sharper than MS-VAE's.
  config.stage2.gan = config.stage2.vae.copy_and_resolve_references()
  config.stage2.gan.adversarial_weight = 1.0
  config.stage2.gan.adversarial_loss = "hinge"  # hinge | non_saturating
  config.stage2.gan.r1_weight = 1.0
  # The discriminator's learning rate, as a multiple of the optimizer's.
  config.stage2.gan.discriminator_learning_rate = 1.0
  # Fakes from the codes of the batch's images ("posterior") or from
  # z ~ N(0, I) as sampling draws them ("prior").
  config.stage2.gan.fake_codes = "posterior"
  config.stage2.gmm = ml_collections.ConfigDict()
  config.stage2.gmm.num_components = 10
  config.stage2.gmm.min_scale = 0.05
  # "balanced": EM with each batch's images shared out evenly over the
  # components; "posterior": plain maximum likelihood, under which the
  # component that starts best takes every image and the mixture collapses
  # onto it (measurements: docs/stage_two.md, "MS-GMM").
  config.stage2.gmm.assignment = "balanced"

  config.batch_size = 64  # The global batch, split over all devices.
  # Convolutions and matrix products of both stages in bfloat16 (parameters,
  # losses and optimizer stay float32): for TPUs and recent GPUs.
  config.compute_dtype = "float32"

  config.log_every_steps = 500
  config.checkpoint_every_steps = 5_000
  config.max_checkpoints_to_keep = 2

  # Reconstruction statistics, figures, the disentanglement suite with
  # disentanglement_lib's study defaults, and FID/KID of samples.
  config.eval = eval_config()

  if preset in ("long", "quick"):
    # Fewer, larger steps: disentanglement_lib's 1e-4 is tuned for 300k steps.
    # With only thousands of steps a stronger TC weight is needed for the
    # latents to align with the factors in time (experiments/RESULTS.md,
    # "Why the defaults are what they are").
    config.stage1.optimizer.learning_rate = 5e-4
    config.stage1.objective.beta = 10.0
    config.stage1.num_steps = 25_000 if preset == "long" else 5_000
    config.stage2.optimizer.learning_rate = 5e-4
    config.stage2.num_steps = 5_000 if preset == "long" else 3_000
    config.log_every_steps = 500 if preset == "long" else 100
    config.checkpoint_every_steps = 2_000 if preset == "long" else 1_000
  elif preset == "tiny":
    config.stage1.num_steps = 6
    config.stage2.num_steps = 6
    config.batch_size = 8
    config.log_every_steps = 2
    config.checkpoint_every_steps = 3
    config.stage2.flow.num_couplings = 2
    config.eval.num_points = 200
    config.eval.batch_size = 100
    config.eval.traversal_steps = 5
    metric_settings = config.eval.disentanglement
    # DCI is left out of a smoke run's default and boosts 10 stages where
    # it is asked for: its classifiers dominate a tiny evaluation.
    metric_settings.metrics = "mig,sap,modularity,beta_vae,factor_vae"
    metric_settings.num_train, metric_settings.num_test = 400, 200
    metric_settings.dci_boosting_stages = 10
    metric_settings.beta_vae.update(batch_size=8, num_train=100, num_eval=50)
    metric_settings.factor_vae.update(
        batch_size=8, num_train=100, num_eval=50, num_variance_estimate=400)
    config.eval.sample_quality.num_samples = 200
    config.eval.sample_quality.kid_subset_size = 100
    config.eval.sample_quality.kid_num_subsets = 10
  return config

"""msdr_jax: multi-stage disentangled representation learning in JAX."""

__version__ = "0.1.0"


def load(workdir: str):
  """The run in `workdir`: its config, data, model and latest parameters.

    run = msdr_jax.load("runs/dsprites-quick-1a2b3c4d")
    images, _ = run.dataset.sample(jax.random.PRNGKey(0), 16)
    reconstructions = run.model.reconstruct(run.params, images)  # Multi-stage.

  Returns a `checkpoints.Run`; `run.model` is the combined model, or stage
  one alone where the run has no stage two. (JAX loads on the first call,
  not on `import msdr_jax`: the command line reports a mistake before it.)
  """
  from msdr_jax import checkpoints  # pylint: disable=g-import-not-at-top
  return checkpoints.load_run(workdir)

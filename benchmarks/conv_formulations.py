"""Times flax's stride-2 (transposed) convolutions against msdr_jax's.

For every stride-2 layer of the two convolutional VAEs the library trains
(disentanglement_lib's and Burgess et al.'s) and for both whole networks,
this times one jitted forward+backward step (`jax.value_and_grad`) of the
flax reference and of `msdr_jax.models.layers`, side by side in one process,
and prints ms/step and the speed-up.

Timing protocol, chosen because these CPUs are shared and noisy: each
compiled function is warmed up, then the reference and the new version are
called alternately (so drifts in machine load hit both equally) and the
median over the repeats is reported, each call ended by `block_until_ready`.

The per-layer loss is `sum(y * c)` with a fixed random cotangent `c`
(`--loss=sum` for a plain `sum(y)`): the all-ones cotangent of a plain sum is a
broadcast constant that XLA may fold into the backward convolutions, which
no real loss gives it. Per-layer gradients are taken w.r.t. both the params
and the input; whole-network gradients w.r.t. the params only, as in
training.

Usage:
  python -m benchmarks.conv_formulations [--batch_size=64] [--channels=1]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from typing import Callable, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

from msdr_jax.models import layers

# (name, kind, input side, in channels, out channels, kernel, padding);
# 'C' is replaced by the image channels.
_DISLIB_LAYERS = (
    ('enc1 conv k4', 'conv', 64, 'C', 32, 4, 'SAME'),
    ('enc2 conv k4', 'conv', 32, 32, 32, 4, 'SAME'),
    ('enc3 conv k2', 'conv', 16, 32, 64, 2, 'SAME'),
    ('enc4 conv k2', 'conv', 8, 64, 64, 2, 'SAME'),
    ('dec1 convT k4', 'convT', 4, 64, 64, 4, 'SAME'),
    ('dec2 convT k4', 'convT', 8, 64, 32, 4, 'SAME'),
    ('dec3 convT k4', 'convT', 16, 32, 32, 4, 'SAME'),
    ('dec4 convT k4', 'convT', 32, 32, 'C', 4, 'SAME'),
)
# Burgess et al.: PyTorch padding=1. For Conv that is flax padding 1; for
# ConvTranspose it is flax 'SAME' (flax's explicit padding=1 pads the dilated
# input and gives 2n - 2 outputs). Layers equal to dislib ones are skipped.
_BURGESS_LAYERS = (
    ('burgess enc1 conv k4 p1', 'conv', 64, 'C', 32, 4, 1),
    ('burgess enc3 conv k4 p1', 'conv', 16, 32, 32, 4, 1),
    ('burgess enc4 conv k4 p1', 'conv', 8, 32, 32, 4, 1),
    ('burgess dec1 convT k4', 'convT', 4, 32, 32, 4, 'SAME'),
    ('burgess dec2 convT k4', 'convT', 8, 32, 32, 4, 'SAME'),
    ('burgess dec4 convT k4', 'convT', 32, 32, 'C', 4, 'SAME'),
)


def make_layer(kind: str, fast: bool, features: int, kernel: int, padding,
               name: str | None = None):
  """The flax reference layer or its msdr_jax replacement.

  Named explicitly inside models: flax derives automatic names from the class
  name, so only explicit names give both versions the same param tree.
  """
  if kind == 'conv':
    if fast:
      return layers.Stride2Conv(features, kernel, padding=padding, name=name)
    return nn.Conv(features, (kernel, kernel), strides=(2, 2),
                   padding=padding, name=name)
  if fast:
    return layers.Stride2ConvTranspose(features, kernel, padding=padding,
                                       name=name)
  return nn.ConvTranspose(features, (kernel, kernel), strides=(2, 2),
                          padding=padding, name=name)


class Encoder(nn.Module):
  """Four stride-2 convolutions and two dense layers to 2 x latent_dim."""

  fast: bool
  convs: Sequence[tuple[int, int, object]]  # (features, kernel, padding)
  hidden: int
  latent_dim: int

  @nn.compact
  def __call__(self, x):
    for i, (features, kernel, padding) in enumerate(self.convs):
      conv = make_layer('conv', self.fast, features, kernel, padding,
                        name=f'conv{i}')
      x = nn.relu(conv(x))
    x = x.reshape(x.shape[0], -1)
    x = nn.relu(nn.Dense(self.hidden)(x))
    return nn.Dense(2 * self.latent_dim)(x)


class Decoder(nn.Module):
  """Dense layers to 4x4xF, then four stride-2 transposed convolutions."""

  fast: bool
  dense: Sequence[int]
  start_features: int
  convs: Sequence[int]  # output features of each transposed convolution

  @nn.compact
  def __call__(self, z):
    for width in self.dense:
      z = nn.relu(nn.Dense(width)(z))
    x = nn.relu(nn.Dense(16 * self.start_features)(z))
    x = x.reshape(x.shape[0], 4, 4, self.start_features)
    for i, features in enumerate(self.convs):
      x = make_layer('convT', self.fast, features, 4, 'SAME',
                     name=f'conv_transpose{i}')(x)
      if i + 1 < len(self.convs):
        x = nn.relu(x)
    return x


class VAE(nn.Module):
  """Enough of a VAE to time a realistic training step."""

  encoder: Encoder
  decoder: Decoder

  def __call__(self, x):
    stats = self.encoder(x)
    mean, log_var = jnp.split(stats, 2, axis=-1)
    return self.decoder(mean), mean, log_var


def make_vae(arch: str, fast: bool, channels: int) -> VAE:
  if arch == 'dislib':
    enc = Encoder(
        fast, ((32, 4, 'SAME'), (32, 4, 'SAME'), (64, 2, 'SAME'),
               (64, 2, 'SAME')), hidden=256, latent_dim=10)
    dec = Decoder(fast, dense=(256,), start_features=64,
                  convs=(64, 32, 32, channels))
  else:
    enc = Encoder(fast, ((32, 4, 1),) * 4, hidden=256, latent_dim=10)
    dec = Decoder(fast, dense=(256, 256), start_features=32,
                  convs=(32, 32, 32, channels))
  return VAE(enc, dec)


def vae_loss(model: VAE, params, x):
  logits, mean, log_var = model.apply(params, x)
  recon = jnp.sum(
      jnp.maximum(logits, 0) - logits * x + jnp.log1p(jnp.exp(-jnp.abs(logits)))
  )
  kl = 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(log_var) - log_var - 1.0)
  return (recon + kl) / x.shape[0]


def time_pair(fns: Sequence[Callable[[], object]], warmup: int,
              repeats: int) -> list[float]:
  """Median ms of each thunk, calls interleaved round-robin."""
  for fn in fns:
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = [[] for _ in fns]
  for _ in range(repeats):
    for fn, ts in zip(fns, times):
      start = time.perf_counter()
      jax.block_until_ready(fn())
      ts.append(time.perf_counter() - start)
  return [1e3 * statistics.median(ts) for ts in times]


def max_rel_error(approx, exact) -> float:
  """Largest |approx - exact| over leaves, relative to each leaf's max."""
  errors = jax.tree.map(
      lambda a, e: float(
          np.max(np.abs(np.asarray(a, np.float64) - np.asarray(e)))
          / (np.max(np.abs(np.asarray(e))) + 1e-30)),
      approx, exact)
  return max(jax.tree.leaves(errors))


def float64_errors(step, args32, results32) -> list[float]:
  """Errors of float32 results vs the same step run in float64.

  Comparing flax and the new layers with each other conflates two float32
  roundings; against float64 each gets its own error, which shows whether a
  difference between them is the new layers' fault (it is not: XLA's float32
  reductions in the flax backward pass are, if anything, the less accurate).
  """
  with jax.enable_x64(True):
    args64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), args32)
    exact = jax.tree.map(np.asarray, step(*args64))
  return [max_rel_error(r, exact) for r in results32]


def bench_layer(spec, args, rng) -> tuple[str, float, float, float, float]:
  name, kind, side, cin, cout, kernel, padding = spec
  cin = args.channels if cin == 'C' else cin
  cout = args.channels if cout == 'C' else cout
  x = jax.random.normal(rng, (args.batch_size, side, side, cin))
  ref = make_layer(kind, False, cout, kernel, padding)
  new = make_layer(kind, True, cout, kernel, padding)
  params = ref.init(jax.random.key(1), x)
  y = ref.apply(params, x)
  if args.loss == 'sum':
    cot = jnp.ones_like(y)
  else:
    cot = jax.random.normal(jax.random.key(2), y.shape)

  def step(module):
    loss = lambda p, x, c: jnp.sum(module.apply(p, x) * c)
    return jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))

  f_ref, f_new = step(ref), step(new)
  inputs = (params, x, cot)
  errors = float64_errors(step(ref), inputs, (f_ref(*inputs), f_new(*inputs)))
  t_ref, t_new = time_pair(
      (lambda: f_ref(*inputs), lambda: f_new(*inputs)),
      args.warmup, args.repeats)
  label = f'{name} {side}x{side}x{cin}->{cout}'
  return (label, t_ref, t_new, *errors)


def bench_network(arch, args, rng) -> tuple[str, float, float, float, float]:
  x = jax.random.uniform(
      rng, (args.batch_size, 64, 64, args.channels)) > 0.5
  x = x.astype(jnp.float32)
  ref, new = make_vae(arch, False, args.channels), make_vae(
      arch, True, args.channels)
  params = ref.init(jax.random.key(1), x)
  step = lambda model: jax.jit(
      jax.value_and_grad(lambda p, x: vae_loss(model, p, x)))
  f_ref, f_new = step(ref), step(new)
  errors = float64_errors(
      step(ref), (params, x), (f_ref(params, x), f_new(params, x)))
  t_ref, t_new = time_pair(
      (lambda: f_ref(params, x), lambda: f_new(params, x)),
      args.warmup, args.repeats)
  return (f'{arch} encoder+decoder (VAE loss)', t_ref, t_new, *errors)


def cpu_model() -> str:
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch_size', type=int, default=64)
  parser.add_argument('--channels', type=int, default=1,
                      help='image channels (1 for dSprites, 3 for colour)')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--loss', choices=('weighted', 'sum'),
                      default='weighted')
  parser.add_argument('--what', choices=('all', 'layers', 'networks'),
                      default='all')
  args = parser.parse_args(argv)

  affinity = (len(os.sched_getaffinity(0))
              if hasattr(os, 'sched_getaffinity') else os.cpu_count())
  print(f'machine: {cpu_model()}, {os.cpu_count()} CPUs ({affinity} usable)')
  print(f'jax {jax.__version__}, jaxlib {jaxlib.__version__}, flax '
        f'{flax.__version__}, backend {jax.default_backend()}, devices '
        f'{jax.devices()}')
  print(f'batch {args.batch_size}, {args.channels} image channel(s), '
        f'{args.loss} loss, median of {args.repeats} interleaved repeats, '
        f'jitted value_and_grad\n')

  print('err: max |g - g64| / max |g64| over the loss and every gradient leaf,'
        ' g64 from the flax step in float64\n')
  print(f'{"":44s} {"flax ms":>9s} {"new ms":>9s} {"speed-up":>9s} '
        f'{"flax err":>9s} {"new err":>9s}')
  rows = []
  rng = jax.random.key(0)
  if args.what in ('all', 'layers'):
    for spec in _DISLIB_LAYERS + _BURGESS_LAYERS:
      rows.append(bench_layer(spec, args, rng))
      print(_format(rows[-1]), flush=True)
  if args.what in ('all', 'networks'):
    for arch in ('dislib', 'burgess'):
      rows.append(bench_network(arch, args, rng))
      print(_format(rows[-1]), flush=True)
  return rows


def _format(row) -> str:
  label, t_ref, t_new, err_ref, err_new = row
  return (f'{label:44s} {t_ref:9.2f} {t_new:9.2f} {t_ref / t_new:8.2f}x '
          f'{err_ref:9.1e} {err_new:9.1e}')


if __name__ == '__main__':
  main()

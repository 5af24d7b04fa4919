"""Stride2Conv / Stride2ConvTranspose must be the flax layers, numerically.

Every case initialises the flax reference, runs the new module on the *same*
params and compares outputs and gradients w.r.t. params and inputs (under a
random cotangent, so that no gradient entry is trivially structured). The
cases cover the VAE layers (disentanglement_lib and Burgess et al.) plus odd
batch and spatial sizes and other paddings, so every formulation the modules
pick (plain op, custom-JVP tangents, space-to-depth matmul, phase
decomposition) is exercised.
"""

import flax.linen as nn
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np
import pytest

from msdr_jax.models import layers

# float32 convolutions reassociate sums differently; 1e-5 of the scale of
# each compared array is well above that noise and far below any real bug.
_RTOL = 1e-5


def _assert_close(actual, expected, what):
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  scale = max(float(np.max(np.abs(expected))), 1e-6)
  err = float(np.max(np.abs(actual - expected)))
  assert err <= _RTOL * scale, f'{what}: |diff| {err:.3g}, scale {scale:.3g}'


def _random_like(tree, seed):
  """numpy normals shaped like `tree`, scaled like LeCun init per leaf.

  numpy rather than jax.random (or the modules' own initialisers) because
  compiling a threefry sampler per new shape costs ~1 s on CPU, which would
  dominate the test time; random (non-zero) biases also exercise the bias.
  """
  rng = np.random.default_rng(seed)

  def sample(leaf):
    fan_in = np.prod(leaf.shape[:-1]) if len(leaf.shape) > 1 else 1
    return (rng.standard_normal(leaf.shape) / np.sqrt(fan_in)).astype(
        leaf.dtype)

  return jax.tree.map(sample, tree)


def _compare(reference, module, input_shape):
  """Checks params, outputs and both gradients of `module` vs `reference`."""
  x = np.random.default_rng(0).standard_normal(input_shape).astype(np.float32)
  param_shapes = jax.eval_shape(reference.init, jax.random.key(1), x)
  new_param_shapes = jax.eval_shape(module.init, jax.random.key(1), x)
  # Same tree, shapes and dtypes: params are interchangeable.
  assert new_param_shapes == param_shapes
  params = _random_like(param_shapes, seed=1)
  out_shape = jax.eval_shape(reference.apply, params, x).shape
  cotangent = np.random.default_rng(2).standard_normal(out_shape).astype(
      np.float32)

  def value_and_grads(mod):
    loss = lambda p, x: jnp.sum(mod.apply(p, x) * cotangent)
    return jax.jit(
        lambda p, x: (mod.apply(p, x), jax.grad(loss, argnums=(0, 1))(p, x))
    )(params, x)

  y_ref, (dp_ref, dx_ref) = value_and_grads(reference)
  y_new, (dp_new, dx_new) = value_and_grads(module)
  _assert_close(y_new, y_ref, 'output')
  _assert_close(dx_new, dx_ref, 'input gradient')
  for name in ('kernel', 'bias'):
    _assert_close(dp_new['params'][name], dp_ref['params'][name],
                  f'{name} gradient')


# (input side, in channels, out channels, kernel, padding, batch)
_CONV_CASES = [
    (64, 1, 32, 4, 'SAME', 3),  # dislib / Burgess image layer, dSprites
    (64, 3, 32, 4, 'SAME', 1),  # image layer, colour data sets
    (32, 32, 32, 4, 'SAME', 5),  # dislib enc2: space-to-depth input grad
    (16, 32, 64, 2, 'SAME', 3),  # dislib enc3: one matmul
    (8, 64, 64, 2, 'SAME', 5),  # dislib enc4: custom JVP, kernel 2
    (16, 32, 32, 4, 1, 3),  # Burgess enc3 (padding 1)
    (8, 32, 32, 4, 1, 1),  # Burgess enc4
    (7, 5, 6, 4, 'SAME', 2),  # odd size: SAME pads (1, 2)
    (17, 4, 8, 2, 'SAME', 2),  # odd size, matmul path, pads (0, 1)
    (9, 6, 4, 3, 'SAME', 2),  # odd kernel
    (10, 8, 4, 4, 'VALID', 2),
    (12, 8, 4, 4, ((0, 2), (1, 0)), 2),
]


@pytest.mark.parametrize('side,cin,cout,kernel,padding,batch', _CONV_CASES)
def test_conv_matches_flax(side, cin, cout, kernel, padding, batch):
  reference = nn.Conv(cout, (kernel, kernel), strides=(2, 2), padding=padding)
  module = layers.Stride2Conv(cout, kernel, padding=padding)
  _compare(reference, module, (batch, side, side, cin))


# (input side, in channels, out channels, kernel, padding, batch)
_CONV_TRANSPOSE_CASES = [
    (4, 64, 64, 4, 'SAME', 3),  # dislib dec1
    (8, 64, 32, 4, 'SAME', 5),  # dislib dec2
    (16, 32, 32, 4, 'SAME', 3),  # dislib dec3 / Burgess: phase decomposition
    (32, 32, 1, 4, 'SAME', 1),  # output layer, dSprites
    (32, 32, 3, 4, 'SAME', 1),  # output layer, colour data sets
    (4, 32, 32, 4, 'SAME', 1),  # Burgess dec1
    (17, 4, 8, 4, 'SAME', 2),  # odd size, phase decomposition
    (5, 6, 4, 4, 'SAME', 2),  # odd size
    (6, 4, 5, 2, 'SAME', 2),
    (6, 4, 5, 3, 'VALID', 2),
    (6, 4, 5, 4, 1, 2),  # flax explicit padding (of the dilated input)
    (6, 4, 5, 4, ((1, 0), (3, 2)), 2),
]


@pytest.mark.parametrize('side,cin,cout,kernel,padding,batch',
                         _CONV_TRANSPOSE_CASES)
def test_conv_transpose_matches_flax(side, cin, cout, kernel, padding, batch):
  reference = nn.ConvTranspose(
      cout, (kernel, kernel), strides=(2, 2), padding=padding
  )
  module = layers.Stride2ConvTranspose(cout, kernel, padding=padding)
  _compare(reference, module, (batch, side, side, cin))


def test_same_initial_params_as_flax():
  """Same names, shapes and initialisers: same rng gives the same params."""
  x = jnp.zeros((1, 8, 8, 3))
  pairs = [
      (nn.Conv(5, (4, 4), strides=(2, 2)), layers.Stride2Conv(5, 4)),
      (nn.ConvTranspose(5, (4, 4), strides=(2, 2)),
       layers.Stride2ConvTranspose(5, 4)),
  ]
  for reference, module in pairs:
    expected = reference.init(jax.random.key(1), x)
    actual = module.init(jax.random.key(1), x)
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected)):
      np.testing.assert_array_equal(a, e)


@pytest.mark.parametrize('input_shape', [(2, 3, 8, 8, 4), (8, 8, 4)])
def test_extra_and_missing_batch_dims(input_shape):
  _compare(nn.Conv(6, (4, 4), strides=(2, 2)), layers.Stride2Conv(6, 4),
           input_shape)
  _compare(nn.ConvTranspose(6, (4, 4), strides=(2, 2)),
           layers.Stride2ConvTranspose(6, 4), input_shape)


@pytest.mark.parametrize('side', [8, 16, 32, 64])
def test_conv_padding_one_is_same_for_even_sizes(side):
  """Burgess's padding-1 encoder layers are flax 'SAME' layers at even sizes."""
  x = _random_like(jax.ShapeDtypeStruct((2, side, side, 3), jnp.float32), 0)
  same = nn.Conv(4, (4, 4), strides=(2, 2), padding='SAME')
  params = _random_like(jax.eval_shape(same.init, jax.random.key(1), x), 1)
  one = nn.Conv(4, (4, 4), strides=(2, 2), padding=1)
  np.testing.assert_array_equal(one.apply(params, x), same.apply(params, x))


def test_conv_padding_one_differs_from_same_for_odd_sizes():
  x = jnp.zeros((1, 7, 7, 1))
  same = nn.Conv(1, (4, 4), strides=(2, 2), padding='SAME')
  one = nn.Conv(1, (4, 4), strides=(2, 2), padding=1)
  assert same.init_with_output(jax.random.key(0), x)[0].shape[1] == 4
  assert one.init_with_output(jax.random.key(0), x)[0].shape[1] == 3


def test_conv_transpose_same_is_pytorch_padding_one():
  """flax 'SAME' is PyTorch's ConvTranspose2d(k=4, s=2, padding=1).

  PyTorch defines that layer as the adjoint of the padding-1 stride-2
  convolution, with its kernel stored as `[in, out, kh, kw]` of the forward
  convolution; in flax's unflipped `[kh, kw, in, out]` layout that is the
  spatially flipped kernel. flax's explicit `padding=1` is another layer.
  """
  x = _random_like(jax.ShapeDtypeStruct((2, 8, 8, 3), jnp.float32), 0)
  layer = layers.Stride2ConvTranspose(5, 4)
  params = _random_like(jax.eval_shape(layer.init, jax.random.key(1), x), 1)
  kernel = params['params']['kernel']  # [4, 4, 3, 5]
  bias = params['params']['bias']

  def conv_padding_one(z):  # [2, 16, 16, 5] -> [2, 8, 8, 3]
    forward_kernel = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    return lax.conv_general_dilated(
        z, forward_kernel, (2, 2), ((1, 1), (1, 1)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'))

  adjoint = jax.linear_transpose(
      conv_padding_one, jax.ShapeDtypeStruct((2, 16, 16, 5), jnp.float32))
  (expected,) = adjoint(x)
  _assert_close(layer.apply(params, x), expected + bias, 'adjoint')
  flax_same = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding='SAME')
  _assert_close(flax_same.apply(params, x), expected + bias, 'flax SAME')
  flax_one = nn.ConvTranspose(5, (4, 4), strides=(2, 2), padding=1)
  assert flax_one.apply(params, x).shape == (2, 14, 14, 5)


@pytest.mark.parametrize(
    'reference,module,input_shape',
    [
        (nn.Conv(8, (4, 4), strides=(2, 2)), layers.Stride2Conv(8, 4),
         (2, 8, 8, 4)),
        (nn.ConvTranspose(8, (4, 4), strides=(2, 2)),
         layers.Stride2ConvTranspose(8, 4), (2, 16, 16, 4)),
    ],
)
def test_forward_mode_and_second_order(reference, module, input_shape):
  """The custom JVPs keep jvp and grad-of-grad exact, not just grad."""
  x = _random_like(jax.ShapeDtypeStruct(input_shape, jnp.float32), 0)
  params = _random_like(
      jax.eval_shape(reference.init, jax.random.key(1), x), 1)
  tangents = jax.tree.map(lambda a: jnp.ones_like(a) * 0.1, (params, x))

  def jvp(mod):
    return jax.jvp(lambda p, x: mod.apply(p, x), (params, x), tangents)

  for new, ref in zip(jvp(module), jvp(reference)):
    _assert_close(new, ref, 'jvp')

  def hvp(mod):
    loss = lambda p: jnp.sum(jnp.sin(mod.apply(p, x)))
    return jax.jvp(jax.grad(loss), (params,), (tangents[0],))[1]

  h_new, h_ref = hvp(module), hvp(reference)
  for name in ('kernel', 'bias'):
    _assert_close(h_new['params'][name], h_ref['params'][name], 'hvp')


@pytest.mark.parametrize('layer,reference', [
    (layers.Stride2Conv(32, 4), nn.Conv(32, (4, 4), strides=(2, 2), padding='SAME')),
    (layers.Stride2ConvTranspose(32, 4),
     nn.ConvTranspose(32, (4, 4), strides=(2, 2), padding='SAME')),
])
def test_plain_formulation_is_flaxs_computation(layer, reference):
  # The same function as flax's layer, computed the way flax computes it.
  module = layer.clone(formulation='plain')
  _compare(reference, module, (2, 16, 16, 32))
  x = jnp.zeros((2, 16, 16, 32))
  params = jax.eval_shape(module.init, jax.random.key(0), x)

  def convolutions(mod):
    """The convolutions of value and gradients, as XLA is asked for them."""
    jaxpr = jax.make_jaxpr(jax.value_and_grad(lambda p, x: mod.apply(p, x).sum(),
                                              argnums=(0, 1)))(params, x)
    return sorted(str({k: eqn.params[k] for k in ('window_strides', 'padding',
                                                  'lhs_dilation', 'rhs_dilation')})
                  for eqn in jaxpr.jaxpr.eqns if eqn.primitive.name == 'conv_general_dilated')

  assert len(convolutions(reference)) == 3  # The value and both gradients.
  assert convolutions(module) == convolutions(reference)
  assert convolutions(layer.clone(formulation='reformulated')) != convolutions(reference)


@pytest.mark.parametrize('backend,reformulated', [('cpu', True), ('gpu', False),
                                                  ('tpu', False)])
def test_default_formulation_follows_the_backend(monkeypatch, backend, reformulated):
  # Until a GPU or TPU measurement supports the reformulation there, only
  # XLA:CPU computes it.
  monkeypatch.setattr(jax, 'default_backend', lambda: backend)
  x = jnp.zeros((2, 16, 16, 32))
  for layer in (layers.Stride2Conv(32, 4), layers.Stride2ConvTranspose(32, 4)):
    params = jax.eval_shape(layer.init, jax.random.key(0), x)
    jaxpr = str(jax.make_jaxpr(lambda p: layer.apply(p, x))(params))
    assert ('custom_jvp_call' in jaxpr) == reformulated, (backend, type(layer).__name__)


def test_unknown_formulation_is_refused():
  with pytest.raises(ValueError, match=r"formulation='fast' must be one of"):
    layers.Stride2Conv(8, 4, formulation='fast').init(
        jax.random.key(0), jnp.zeros((1, 8, 8, 8)))

"""Random training augmentations, on the device inside jit.

Each is ``augment(batch, key) -> batch`` over a whole batch (per-example
randomness from ``key``) and is named by a dataset's registry entry
(``DatasetSpec.augment``), so the engine and the tasks never switch on a
dataset's name. Images are HWC; uint8 images are scaled to [0, 1] first.

* :func:`rotate_images`: random rotation in ±10° (bilinear, zero fill;
  MNIST-style digits).
* :func:`crop_flip_images`: 4-pixel zero pad, random crop back to the
  original size, horizontal flip with probability ½ (CIFAR-10).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

MAX_ROTATION_DEGREES = 10.0
CROP_PADDING = 4


def to_unit(image: jax.Array) -> jax.Array:
  """uint8 [0, 255] → float32 [0, 1]; float images pass through."""
  if image.dtype == jnp.uint8:
    return image.astype(jnp.float32) / 255.0
  return image.astype(jnp.float32)


def rotate(image: jax.Array, degrees: jax.Array) -> jax.Array:
  """Rotates one HWC image about its centre (bilinear, zero fill)."""
  h, w, _ = image.shape
  theta = jnp.deg2rad(degrees)
  cy, cx = (h - 1) / 2.0, (w - 1) / 2.0
  yy, xx = jnp.meshgrid(jnp.arange(h), jnp.arange(w), indexing="ij")
  cos, sin = jnp.cos(theta), jnp.sin(theta)
  src_y = cos * (yy - cy) - sin * (xx - cx) + cy
  src_x = sin * (yy - cy) + cos * (xx - cx) + cx
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(
      channel, [src_y, src_x], order=1, mode="constant", cval=0.0)
  return jax.vmap(sample, in_axes=2, out_axes=2)(image)


def crop_flip(image: jax.Array, key: jax.Array) -> jax.Array:
  """Zero-pads by 4, crops back to the original size at random, may flip."""
  h, w, c = image.shape
  k_y, k_x, k_flip = jax.random.split(key, 3)
  padded = jnp.pad(image, ((CROP_PADDING,) * 2, (CROP_PADDING,) * 2, (0, 0)))
  dy = jax.random.randint(k_y, (), 0, 2 * CROP_PADDING + 1)
  dx = jax.random.randint(k_x, (), 0, 2 * CROP_PADDING + 1)
  out = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))
  return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)


def rotate_images(batch: Mapping, key: jax.Array) -> dict:
  """``batch["image"]`` rotated by a random angle in ±10° per example."""
  image = to_unit(batch["image"])
  keys = jax.random.split(key, image.shape[0])
  angles = jax.vmap(lambda k: jax.random.uniform(
      k, (), minval=-MAX_ROTATION_DEGREES, maxval=MAX_ROTATION_DEGREES))(keys)
  return {**batch, "image": jax.vmap(rotate)(image, angles)}


def crop_flip_images(batch: Mapping, key: jax.Array) -> dict:
  """``batch["image"]`` padded, randomly cropped and flipped per example."""
  image = to_unit(batch["image"])
  keys = jax.random.split(key, image.shape[0])
  return {**batch, "image": jax.vmap(crop_flip)(image, keys)}

"""Random training augmentations, on the device inside jit.

Each is ``augment(batch, key) -> batch`` over a whole batch (per-example
randomness from ``key``) and is named by a dataset's registry entry
(``DatasetSpec.augment``), so the engine and the tasks never switch on a
dataset's name. Images are HWC; uint8 images are scaled to [0, 1] first.

* :func:`rotate_images`: random rotation in ±10° (bilinear, zero fill;
  MNIST-style digits).
* :func:`crop_flip_images`: 4-pixel zero pad, random crop back to the
  original size, horizontal flip with probability ½ (CIFAR-10).
* :func:`flip_scale_crop`: segmentation; the same random horizontal flip
  (probability ½) and scale-crop (zoom by s ~ U[1, 1.5], random crop back to
  the original size) of ``image`` (bilinear) and ``label`` (nearest, so label
  values are never interpolated).
"""
from __future__ import annotations

from typing import Mapping

import jax
import jax.numpy as jnp

MAX_ROTATION_DEGREES = 10.0
CROP_PADDING = 4
MIN_SCALE, MAX_SCALE = 1.0, 1.5  # flip_scale_crop's zoom range


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


def scale_crop_flip(image: jax.Array, label: jax.Array, key: jax.Array,
                    min_scale: float = MIN_SCALE,
                    max_scale: float = MAX_SCALE) -> tuple[jax.Array, jax.Array]:
  """One example's random zoom-crop and flip, identical for image and label.

  The image is (conceptually) resized by ``s ~ U[min_scale, max_scale]`` and
  an ``H × W`` window at a random offset ``(o_y, o_x) ~ U[0, (s − 1)·(H, W)]``
  is cut out: output pixel ``(i, j)`` reads the source point
  ``((i + o_y + ½)/s − ½, (j + o_x + ½)/s − ½)`` (pixel centres, as an
  image resize), bilinearly from ``image`` (edges clamped) and at the
  nearest pixel from ``label``. Shapes are static (index sampling, no
  resize), so it runs inside jit. Then both are flipped left-right with
  probability ½.

  Args:
    image: ``(H, W, C)`` float image.
    label: ``(H, W)`` integer label map (any integer dtype, kept).
    key: the example's random key.
    min_scale: the smallest zoom factor (≥ 1).
    max_scale: the largest zoom factor.

  Returns:
    ``(image, label)`` with the input shapes and dtypes.
  """
  h, w, _ = image.shape
  k_scale, k_y, k_x, k_flip = jax.random.split(key, 4)
  s = jax.random.uniform(k_scale, (), minval=min_scale, maxval=max_scale)
  off_y = jax.random.uniform(k_y, ()) * (s - 1.0) * h
  off_x = jax.random.uniform(k_x, ()) * (s - 1.0) * w
  src_y = (jnp.arange(h) + off_y + 0.5) / s - 0.5
  src_x = (jnp.arange(w) + off_x + 0.5) / s - 0.5
  yy, xx = jnp.meshgrid(src_y, src_x, indexing="ij")
  sample = lambda channel: jax.scipy.ndimage.map_coordinates(
      channel, [yy, xx], order=1, mode="nearest")
  out_image = jax.vmap(sample, in_axes=2, out_axes=2)(image)
  near_y = jnp.clip(jnp.floor(src_y + 0.5), 0, h - 1).astype(jnp.int32)
  near_x = jnp.clip(jnp.floor(src_x + 0.5), 0, w - 1).astype(jnp.int32)
  out_label = label[near_y[:, None], near_x[None, :]]
  flip = jax.random.bernoulli(k_flip)
  return (jnp.where(flip, out_image[:, ::-1], out_image),
          jnp.where(flip, out_label[:, ::-1], out_label))


def flip_scale_crop(batch: Mapping, key: jax.Array) -> dict:
  """Segmentation augmentation of ``batch["image"]`` and ``batch["label"]``.

  Per example, a random horizontal flip (probability ½) and a random
  scale-crop — zoom by ``s ~ U[1.0, 1.5]``, bilinear for the image and
  nearest for the label, then a random ``H × W`` crop — applied identically
  to both (:func:`scale_crop_flip`). uint8 images are scaled to [0, 1];
  labels keep their dtype and values (255 = ignore stays 255).
  """
  image = to_unit(batch["image"])
  keys = jax.random.split(key, image.shape[0])
  image, label = jax.vmap(scale_crop_flip)(image, batch["label"], keys)
  return {**batch, "image": image, "label": label}

"""Training augmentations (``data/augment.py``), chosen by dataset entries."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from optbench_jax import data
from optbench_jax.data import augment
from optbench_jax.data.augment import crop_flip, rotate


def test_rotation_by_90_degrees_moves_a_bar_and_zero_is_identity():
  image = jnp.zeros((11, 11, 1)).at[5, 2:9, 0].set(1.0)  # horizontal bar
  rotated = np.asarray(rotate(image, jnp.array(90.0)))[..., 0]
  np.testing.assert_allclose(rotated[2:9, 5], 1.0, atol=1e-5)
  assert rotated[5, 2] == pytest.approx(0.0, abs=1e-5)
  np.testing.assert_allclose(rotate(image, jnp.array(0.0)), image, atol=1e-6)


def test_crop_flip_keeps_shape_and_content_from_the_padded_image():
  image = jax.random.uniform(jax.random.key(0), (32, 32, 3))
  out = crop_flip(image, jax.random.key(1))
  assert out.shape == image.shape
  values = set(np.round(np.asarray(image).ravel(), 6)) | {0.0}
  assert set(np.round(np.asarray(out).ravel(), 6)) <= values


def test_datasets_name_their_augmentation_in_their_registry_entry():
  assert data.get("image_classification", "mnist_5k").augment is (
      augment.rotate_images)
  assert data.get("image_classification", "cifar10").augment is (
      augment.crop_flip_images)
  assert data.get("image_classification", "synthetic").augment is None
  raw = data.load("image_classification", "digits")
  assert raw.info.augment is None


def test_batch_augmentations_keep_shapes_and_scale_uint8():
  batch = {"image": jnp.full((4, 28, 28, 1), 255, jnp.uint8),
           "label": jnp.arange(4)}
  for fn in (augment.rotate_images, augment.crop_flip_images):
    out = fn(batch, jax.random.key(0))
    assert out["image"].shape == (4, 28, 28, 1)
    assert out["image"].dtype == jnp.float32
    assert float(out["image"].max()) <= 1.0
    np.testing.assert_array_equal(out["label"], batch["label"])

"""The JPEG input path the training benchmark compares shards against (the project's path before
shards): every photo decoded with Pillow inside ``tf.numpy_function`` through
:func:`mushroom.preprocess.load_image`, cached in memory, augmented after the cache.

Kept here, not in the library: nothing in the pipeline reads photos this way any more.
"""

from __future__ import annotations

from mushroom.datasets import SplitExamples, augmentation
from mushroom.preprocess import load_image


def jpeg_dataset(
    examples: SplitExamples,
    image_size: int,
    batch_size: int,
    training: bool,
    seed: int = 42,
    one_hot: bool = True,
):
    """Build a batched, cached, prefetched ``tf.data.Dataset`` of ``(pixels, label)``.

    Decoding goes through :func:`mushroom.preprocess.load_image`, the same function
    ``identify`` uses, so training and inference see identical pixels. Decoded images are
    cached; augmentation (train only) runs after the cache so each epoch differs.
    """
    import tensorflow as tf

    num_classes = len(examples.catalog)

    def decode(path):
        image = tf.numpy_function(lambda p: load_image(p.decode(), image_size), [path], tf.uint8)
        image.set_shape((image_size, image_size, 3))
        return image

    ds = tf.data.Dataset.from_tensor_slices((examples.paths, examples.labels))
    ds = ds.map(lambda p, y: (decode(p), y), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.cache()
    if training:
        ds = ds.shuffle(min(len(examples), 10_000), seed=seed, reshuffle_each_iteration=True)
    ds = ds.batch(batch_size)
    ds = ds.map(lambda x, y: (tf.cast(x, tf.float32), y), num_parallel_calls=tf.data.AUTOTUNE)
    if training:
        aug = augmentation(seed)
        ds = ds.map(lambda x, y: (aug(x, training=True), y), num_parallel_calls=tf.data.AUTOTUNE)
    if one_hot:
        ds = ds.map(lambda x, y: (x, tf.one_hot(y, num_classes)))
    return ds.prefetch(tf.data.AUTOTUNE)

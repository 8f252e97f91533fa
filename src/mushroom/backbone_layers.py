"""Keras layers that backbones put into the model graph (imports Keras: kept apart from the
registry in :mod:`mushroom.backbones`, which configuration validation reads without TensorFlow)."""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="mushroom")
class CaffePreprocess(keras.layers.Layer):
    """ResNet50's ImageNet preprocessing (RGB->BGR, mean subtraction) as a graph layer."""

    MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1)
        return bgr - keras.ops.convert_to_tensor(self.MEAN_BGR, dtype=inputs.dtype)

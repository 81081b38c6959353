"""A small Keras model that neither XLA nor OpenVINO's converter can follow: it pools in Python."""

from __future__ import annotations


def python_pooling_model():
    """Conv2D then global average pooling through `tf.numpy_function`."""
    import keras
    import tensorflow as tf

    class NumpyMean(keras.layers.Layer):
        """Global average pooling through a Python function."""

        def call(self, maps):
            mean = tf.numpy_function(lambda a: a.mean(axis=(1, 2)), [maps], tf.float32)
            mean.set_shape((None, maps.shape[-1]))
            return mean

    inputs = keras.Input((224, 224, 3))
    return keras.Model(inputs, NumpyMean()(keras.layers.Conv2D(4, 3)(inputs)))

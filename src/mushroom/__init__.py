"""quantized-mushroom: train, quantize and evaluate a mushroom species classifier.

The library is plain Python + TensorFlow; it never imports KFP. Heavy modules
(TensorFlow, Keras) are imported lazily by the modules that need them, so that
``mushroom.species`` and friends stay cheap to import.
"""

__version__ = "0.1.0"
